//! Launch geometry of our CUDA kernels (grid and block sizes), kept apart from the CUDA code so
//! that the kernels' CPU emulation (tests/kernels_emulated.rs) launches them exactly as the CUDA
//! path does, on builds without feature `cuda`.

use candle_core::{Result, bail};

/// Threads per block of every kernel. `kernels/render.cu` sizes its shared reduction buffers with
/// the same number (`#define BLOCK 256`) and its tree reductions assume a power of two: change
/// both together.
pub const BLOCK: u32 = 256;

/// A grid of blocks of threads, as CUDA's `gridDim` and `blockDim`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
}

/// One thread per element over a 1-D grid.
///
/// The block count is computed in `usize`: casting `total` to u32 first (as this did before)
/// silently launched too few blocks past 2^32 elements, e.g. the 2400 x B*784 column matrix of
/// AlexNet's conv2 at B >= 2283 (a size `fml bench infer`'s batch sweep reaches on an 80 GB GPU),
/// which left most of the output at zero. Grids beyond CUDA's 2^31 - 1 blocks are an error.
pub fn linear(total: usize) -> Result<Launch> {
    let blocks = total.div_ceil(BLOCK as usize).max(1);
    if blocks > i32::MAX as usize {
        bail!("a kernel over {total} elements needs {blocks} blocks, more than CUDA's 2^31 - 1");
    }
    Ok(Launch { grid: (blocks as u32, 1, 1), block: (BLOCK, 1, 1) })
}

/// Grid of (blocks per image, images) for the two-stage reductions, and the blocks per image.
pub fn per_image(batch: u32, n: u32) -> Result<(Launch, u32)> {
    // The image index is blockIdx.y, whose grid dimension CUDA caps at 65535.
    if batch > 65_535 {
        bail!("the render kernels take at most 65535 meshes per batch, got {batch}");
    }
    let blocks = n.div_ceil(BLOCK).max(1);
    Ok((Launch { grid: (blocks, batch, 1), block: (BLOCK, 1, 1) }, blocks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_cover_every_element_and_refuse_what_cuda_cannot_launch() {
        assert_eq!(linear(0).unwrap().grid, (1, 1, 1));
        assert_eq!(linear(256).unwrap().grid, (1, 1, 1));
        assert_eq!(linear(257).unwrap().grid, (2, 1, 1));
        // Past 2^32 elements the count must not wrap.
        assert_eq!(linear(1 << 33).unwrap().grid.0, 1 << 25);
        assert!(linear(256 * (i32::MAX as usize + 1)).is_err());
        assert_eq!(per_image(3, 600).unwrap(), (Launch { grid: (3, 3, 1), block: (BLOCK, 1, 1) }, 3));
        assert!(per_image(65_536, 10).is_err());
    }
}
