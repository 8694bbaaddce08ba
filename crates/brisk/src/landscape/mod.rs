//! Why pre-training helps, seen on the loss surface of fine-tuning: Hao et
//! al., "Visualizing and Understanding the Effectiveness of BERT"
//! (EMNLP 2019), with the tools of Li et al., "Visualizing the Loss
//! Landscape of Neural Nets" (NeurIPS 2018).
//!
//! - [`space`]: points and directions in parameter space (filter
//!   normalisation), written into the model in place;
//! - [`probe`]: a fine-tuned classifier's loss and metric on train and dev
//!   at any point, and the train loss's gradient;
//! - [`views`]: a line between two checkpoints, a plane (fine-tuning or
//!   random directions), and layer-by-layer lines, as resumable
//!   [`grid`]s;
//! - [`project`]: trajectories of checkpoints on a plane (PCA, or Hao et
//!   al.'s angle- and norm-keeping placement);
//! - [`sharpness`]: the top Hessian eigenvalue and ε-sharpness;
//! - [`draw`]: heat maps with contours and trajectories, on one colour scale;
//! - [`report`]: a run's `report.html`.

pub mod draw;
pub mod grid;
pub mod probe;
pub mod project;
pub mod report;
pub mod sharpness;
pub mod space;
pub mod views;

#[cfg(test)]
mod tests;
