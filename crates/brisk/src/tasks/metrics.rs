//! GLUE's metrics: accuracy, F1 (of class 1), Matthews correlation,
//! Pearson and Spearman correlation.

/// The metric names a task may ask for.
pub const NAMES: [&str; 5] = ["accuracy", "f1", "mcc", "pearson", "spearman"];

/// `name` of predictions against gold labels (class ids as `f32` for the
/// classification metrics). `None` for an unknown name.
pub fn score(name: &str, predicted: &[f32], gold: &[f32]) -> Option<f64> {
    Some(match name {
        "accuracy" => accuracy(predicted, gold),
        "f1" => f1(predicted, gold),
        "mcc" => matthews(predicted, gold),
        "pearson" => pearson(predicted, gold),
        "spearman" => spearman(predicted, gold),
        _ => return None,
    })
}

pub fn accuracy(predicted: &[f32], gold: &[f32]) -> f64 {
    let right = predicted.iter().zip(gold).filter(|(p, g)| p == g).count();
    right as f64 / gold.len().max(1) as f64
}

/// Counts of (true positive, false positive, false negative, true negative)
/// for class 1 against the rest.
fn confusion(predicted: &[f32], gold: &[f32]) -> (f64, f64, f64, f64) {
    let mut c = (0.0, 0.0, 0.0, 0.0);
    for (&p, &g) in predicted.iter().zip(gold) {
        match (p == 1.0, g == 1.0) {
            (true, true) => c.0 += 1.0,
            (true, false) => c.1 += 1.0,
            (false, true) => c.2 += 1.0,
            (false, false) => c.3 += 1.0,
        }
    }
    c
}

/// F1 of class 1 (0 when it is never predicted nor present).
pub fn f1(predicted: &[f32], gold: &[f32]) -> f64 {
    let (tp, fp, fn_, _) = confusion(predicted, gold);
    if tp == 0.0 {
        return 0.0;
    }
    2.0 * tp / (2.0 * tp + fp + fn_)
}

/// Matthews correlation of class 1 against the rest (0 when a margin is
/// empty, as scikit-learn does).
pub fn matthews(predicted: &[f32], gold: &[f32]) -> f64 {
    let (tp, fp, fn_, tn) = confusion(predicted, gold);
    let denom = ((tp + fp) * (tp + fn_) * (tn + fp) * (tn + fn_)).sqrt();
    if denom == 0.0 {
        0.0
    } else {
        (tp * tn - fp * fn_) / denom
    }
}

pub fn pearson(x: &[f32], y: &[f32]) -> f64 {
    let n = x.len().min(y.len()) as f64;
    let mx = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let my = y.iter().map(|&v| v as f64).sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (&a, &b) in x.iter().zip(y) {
        let (dx, dy) = (a as f64 - mx, b as f64 - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        return 0.0;
    }
    sxy / (sxx * syy).sqrt()
}

/// Ranks from 1, ties sharing their mean rank.
fn ranks(x: &[f32]) -> Vec<f32> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0f32; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        let mean = (i + j) as f32 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            r[k] = mean;
        }
        i = j + 1;
    }
    r
}

pub fn spearman(x: &[f32], y: &[f32]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_metrics_match_hand_counts() {
        // tp 3, fp 1, fn 2, tn 4.
        let gold = [1., 1., 1., 1., 1., 0., 0., 0., 0., 0.];
        let pred = [1., 1., 1., 0., 0., 1., 0., 0., 0., 0.];
        assert!((accuracy(&pred, &gold) - 0.7).abs() < 1e-12);
        assert!((f1(&pred, &gold) - 6.0 / 9.0).abs() < 1e-12);
        let mcc = (3.0 * 4.0 - 1.0 * 2.0) / (4.0f64 * 5.0 * 5.0 * 6.0).sqrt();
        assert!((matthews(&pred, &gold) - mcc).abs() < 1e-12);
        assert_eq!(matthews(&[0., 0.], &[1., 0.]), 0.0);
        assert!((matthews(&gold, &gold) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn correlations_handle_scale_and_ties() {
        let x = [1.0, 2.0, 3.0, 4.0];
        let y = [2.0, 4.0, 6.0, 8.0];
        assert!((pearson(&x, &y) - 1.0).abs() < 1e-12);
        assert!((pearson(&x, &[8.0, 6.0, 4.0, 2.0]) + 1.0).abs() < 1e-12);
        // Monotone but not linear: Spearman 1, Pearson below.
        let cubed = [1.0, 8.0, 27.0, 64.0];
        assert!((spearman(&x, &cubed) - 1.0).abs() < 1e-12);
        assert!(pearson(&x, &cubed) < 0.99);
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
        assert_eq!(score("nope", &x, &y), None);
    }
}
