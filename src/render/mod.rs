//! The image formation layer (Sec. 5): camera, SH shading, and rendering.

pub mod camera;
pub mod raster;
pub mod sh;
