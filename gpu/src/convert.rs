//! BGRA → I420 of a whole image on the GPU, for callers that hold the
//! image in host memory (the tests and the benchmark): the image is copied
//! into a [`GpuBuffer`], converted by the render thread's I420 shader
//! (`shaders/i420.wgsl`) and copied out. Sessions convert in place instead
//! (their scanout already lives in a GPU buffer). Gives the same bytes as
//! [`crate::compose::i420_cpu`] (integer math in both), which the tests
//! check on lavapipe.

use std::sync::Arc;

use crate::enumerate::GpuError;
use crate::render::{GpuBuffer, RenderError, Renderer, Step};

/// Why an image was not converted.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("I420 needs a width that is a multiple of 8 and an even height, not {width}×{height}")]
    Size { width: u32, height: u32 },
    #[error("{len} bytes for a {width}×{height} BGRA image")]
    Length { len: usize, width: u32, height: u32 },
    #[error(transparent)]
    Buffer(#[from] GpuError),
    #[error(transparent)]
    Run(#[from] RenderError),
}

pub struct I420Converter {
    renderer: Arc<Renderer>,
    /// (input, output, width, height) for the current frame size.
    buffers: Option<(GpuBuffer, GpuBuffer, u32, u32)>,
}

impl I420Converter {
    pub fn new(renderer: Arc<Renderer>) -> I420Converter {
        I420Converter {
            renderer,
            buffers: None,
        }
    }

    /// Converts `bgra` (`width` × `height`, width a multiple of 8, height
    /// even) to I420 bytes.
    pub fn convert(
        &mut self,
        bgra: &[u8],
        width: u32,
        height: u32,
    ) -> Result<Vec<u8>, ConvertError> {
        if width == 0 || height == 0 || !width.is_multiple_of(8) || !height.is_multiple_of(2) {
            return Err(ConvertError::Size { width, height });
        }
        let input_size = u64::from(width) * u64::from(height) * 4;
        if bgra.len() as u64 != input_size {
            return Err(ConvertError::Length {
                len: bgra.len(),
                width,
                height,
            });
        }
        if !matches!(self.buffers, Some((_, _, w, h)) if w == width && h == height) {
            self.buffers = None;
            let input = self.renderer.buffer(input_size)?;
            let output = self.renderer.buffer(input_size * 3 / 8)?;
            self.buffers = Some((input, output, width, height));
        }
        let (input, output, _, _) = self.buffers.as_mut().expect("made above");
        input.bytes_mut().copy_from_slice(bgra);
        let step = Step::I420 {
            input: input.buffer,
            stride: width,
            origin_x: 0,
            origin_y: 0,
            width,
            height,
            area: (0, 0, width, height),
            output: output.buffer,
        };
        self.renderer.run("convert", vec![step])?;
        Ok(output.bytes().to_vec())
    }
}
