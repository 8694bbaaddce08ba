//! Optimisation trajectories on a plane: checkpoints θ_t mapped to 2-D
//! coordinates, with what the plane misses of each (the off-plane
//! residual, which Li et al.'s tool does not report).
//!
//! Two planes: Li et al.'s PCA of `θ_t − θ_final` (centred, as their
//! scikit-learn PCA centres), whose orthonormal axes make the projection a
//! pair of inner products; and Hao et al.'s plane of two fine-tuning
//! directions from the start, where a checkpoint is placed so that its
//! distance from the start and its angle to the first direction are kept.

use serde::Serialize;

use super::space::Point;

/// A point's place on a plane.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Projected {
    pub x: f64,
    pub y: f64,
    /// The norm of what the plane misses of the point.
    pub residual: f64,
}

/// Li et al.'s plane: two orthonormal directions and the fraction of the
/// variance of `θ_t − θ_final` each explains.
pub struct PcaPlane {
    pub axes: [Point; 2],
    pub explained: [f64; 2],
}

/// The top-two principal directions of `points − last` (the last point is
/// the origin of the plane). Needs at least three points.
pub fn pca_plane(points: &[Point]) -> Option<PcaPlane> {
    let n = points.len();
    if n < 3 {
        return None;
    }
    let last = &points[n - 1];
    let rows: Vec<Point> = points.iter().map(|p| p.minus(last)).collect();
    let mut mean = Point::zeros_like(&rows[0]);
    for r in &rows {
        mean.add_scaled(1.0 / n as f64, r);
    }
    let centred: Vec<Point> = rows.iter().map(|r| r.minus(&mean)).collect();
    // PCA through the n × n Gram matrix: n checkpoints, millions of weights.
    let mut gram = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let v = centred[i].dot(&centred[j]);
            gram[i * n + j] = v;
            gram[j * n + i] = v;
        }
    }
    let (values, vectors) = symmetric_eigen(&gram, n);
    let total: f64 = values.iter().filter(|v| **v > 0.0).sum();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    let axis = |k: usize| -> Point {
        let mut d = Point::zeros_like(&rows[0]);
        for (i, c) in centred.iter().enumerate() {
            d.add_scaled(vectors[i * n + k], c);
        }
        let norm = d.norm();
        if norm > 0.0 {
            d.scale(1.0 / norm);
        }
        d
    };
    let (a, b) = (order[0], order[1]);
    Some(PcaPlane {
        axes: [axis(a), axis(b)],
        explained: [
            values[a].max(0.0) / total.max(f64::MIN_POSITIVE),
            values[b].max(0.0) / total.max(f64::MIN_POSITIVE),
        ],
    })
}

/// `m`'s coordinates on orthonormal axes, and the residual.
pub fn onto_orthonormal(m: &Point, axes: &[Point; 2]) -> Projected {
    let (x, y) = (m.dot(&axes[0]), m.dot(&axes[1]));
    let residual = (m.dot(m) - x * x - y * y).max(0.0).sqrt();
    Projected { x, y, residual }
}

/// Hao et al.'s placement of `m = θ_t − θ_start`: distance `‖m‖` at the
/// angle it makes with `d1`, on the side of the plane's second axis
/// (`d2` made orthogonal to `d1`) that `m` leans to. Points of the plane
/// land where the plane's orthonormal coordinates put them.
pub fn keep_angle_and_norm(m: &Point, d1: &Point, d2: &Point) -> Projected {
    let n1 = d1.norm();
    let e2 = orthogonal_part(d2, d1);
    let norm = m.norm();
    if norm == 0.0 || n1 == 0.0 {
        return Projected {
            x: 0.0,
            y: 0.0,
            residual: 0.0,
        };
    }
    let cos = (m.dot(d1) / (norm * n1)).clamp(-1.0, 1.0);
    let side = if m.dot(&e2) < 0.0 { -1.0 } else { 1.0 };
    let x = norm * cos;
    let y = side * norm * (1.0 - cos * cos).sqrt();
    // What the plane misses: the part of m outside span(d1, d2).
    let n2 = e2.norm();
    let in_1 = m.dot(d1) / n1;
    let in_2 = if n2 > 0.0 { m.dot(&e2) / n2 } else { 0.0 };
    let residual = (norm * norm - in_1 * in_1 - in_2 * in_2).max(0.0).sqrt();
    Projected { x, y, residual }
}

/// `d2` minus its component along `d1`.
pub fn orthogonal_part(d2: &Point, d1: &Point) -> Point {
    let mut e2 = d2.clone();
    let n1 = d1.dot(d1);
    if n1 > 0.0 {
        e2.add_scaled(-d2.dot(d1) / n1, d1);
    }
    e2
}

/// Eigenvalues and eigenvectors (columns of a row-major `n × n` matrix) of
/// a symmetric matrix, by cyclic Jacobi rotations.
pub fn symmetric_eigen(matrix: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = matrix.to_vec();
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j].powi(2))
            .sum();
        let scale: f64 = a.iter().map(|x| x * x).sum();
        if off <= 1e-24 * scale.max(f64::MIN_POSITIVE) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::landscape::space::Layout;

    fn point(values: &[f32]) -> Point {
        Point {
            groups: vec![values.to_vec()],
        }
    }

    #[test]
    fn jacobi_finds_the_eigenpairs_of_a_known_matrix() {
        // [[2, 1], [1, 2]]: eigenvalues 1 and 3.
        let (values, vectors) = symmetric_eigen(&[2.0, 1.0, 1.0, 2.0], 2);
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        assert!((sorted[0] - 1.0).abs() < 1e-12 && (sorted[1] - 3.0).abs() < 1e-12);
        let k = if values[0] > values[1] { 0 } else { 1 };
        assert!((vectors[k].abs() - 0.5f64.sqrt()).abs() < 1e-12);
        assert!((vectors[2 + k].abs() - 0.5f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn a_straight_path_projects_to_a_straight_line_through_the_origin() {
        let layout = Layout::single_tensors(&[("w", &[4])]);
        let start = point(&[1.0, -2.0, 0.5, 3.0]);
        let end = point(&[2.0, 1.0, -0.5, 2.0]);
        let path: Vec<Point> = (0..=6)
            .map(|i| {
                let mut p = start.clone();
                p.add_scaled(i as f64 / 6.0, &end.minus(&start));
                p
            })
            .collect();
        assert_eq!(Point::zeros(&layout).len(), 4);
        let plane = pca_plane(&path).expect("enough points");
        let coords: Vec<Projected> = path
            .iter()
            .map(|p| onto_orthonormal(&p.minus(&end), &plane.axes))
            .collect();
        let last = coords.last().unwrap();
        assert!(last.x.abs() < 1e-6 && last.y.abs() < 1e-6);
        // Collinear: every point on the line through the first and origin.
        let first = coords[0];
        for c in &coords {
            let cross = c.x * first.y - c.y * first.x;
            assert!(cross.abs() < 1e-4, "{c:?}");
            assert!(c.residual < 1e-4);
        }
        assert!(plane.explained[0] > 0.999);
    }

    #[test]
    fn angle_and_norm_are_kept_and_in_plane_points_have_no_residual() {
        let d1 = point(&[1.0, 0.0, 0.0]);
        let d2 = point(&[1.0, 1.0, 0.0]);
        let m = point(&[0.5, 2.0, 0.0]);
        let p = keep_angle_and_norm(&m, &d1, &d2);
        assert!((p.x - 0.5).abs() < 1e-6 && (p.y - 2.0).abs() < 1e-6);
        assert!(p.residual < 1e-6);
        let off = point(&[0.0, 0.0, 3.0]);
        let q = keep_angle_and_norm(&off, &d1, &d2);
        assert!((q.x.hypot(q.y) - 3.0).abs() < 1e-6 && (q.residual - 3.0).abs() < 1e-6);
    }
}
