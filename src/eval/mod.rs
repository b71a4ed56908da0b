//! Geometry for evaluation: similarity transforms and Umeyama estimation, closest points on a
//! triangle mesh (BVH), similarity ICP of a prediction onto a ground truth of any topology,
//! face cropping and error statistics (paper Table 1: errors "after alignment (rigid transform
//! plus isotropic scaling)").
//!
//! Pure CPU code on `[f32; 3]` meshes, computed in `f64`; parallel (rayon) where it pays, and
//! deterministic: results do not depend on the number of threads.

pub mod bvh;
pub mod closest;
pub mod icp;
pub mod linalg;
pub mod region;
pub mod similarity;
pub mod stats;

pub use bvh::{SurfaceHit, TriangleBvh, point_to_surface_distances};
pub use closest::closest_point_on_triangle;
pub use icp::{Alignment, IcpConfig, align, init_from_centroids, init_from_landmarks};
pub use region::{face_region_by_radius, nose_tip_by_max_z};
pub use similarity::{Similarity, aligned_vertex_error, umeyama};
pub use stats::{DistanceStats, LinearFit, distance_stats, linear_fit, median, summary, summary_with_ddof};
