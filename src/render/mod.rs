//! The image formation layer (Sec. 5): camera, SH shading, the differentiable point-based
//! renderer (reference and fast paths) and the triangle rasteriser for pictures.

pub mod camera;
pub mod layer;
pub mod ops;
pub mod raster;
pub mod reference;
pub mod sh;

pub use layer::{Backend, ImageFormation, RenderInput, Rendered};

#[cfg(test)]
mod tests;
