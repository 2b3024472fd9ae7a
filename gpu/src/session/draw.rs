//! SUBMIT_3D: a composition list drawn into its target resource, planned
//! once (`compose::plan`) and run as the GPU's steps (shader passes, or
//! buffer copies for plain opaque pieces) or, with no GPU, by the CPU
//! reference. Only the wl_shm formats are composed; others are refused.

use super::{Resource, Session};
use crate::compose::{compose_cpu, plan, CompositionList, Image};
use crate::protocol::{resp, Format};
use crate::render::Step;

impl Session {
    /// Renders a composition list into its target resource: planned once
    /// (`compose::plan`), then drawn by the GPU's compute shader or, with
    /// no GPU, the CPU reference.
    pub(super) fn compose(&mut self, list: &CompositionList) -> Result<(), u32> {
        if list
            .draws
            .iter()
            .any(|draw| draw.resource_id == list.target)
        {
            return Err(resp::ERR_INVALID_PARAMETER);
        }
        // Composition reads and writes B, G, R(, A) bytes: the wl_shm
        // formats. Others are refused, never misread.
        let bgra = |id: &u32| self.resources.get(id).is_none_or(|r| r.format.is_bgra());
        if !bgra(&list.target) || !list.draws.iter().all(|d| bgra(&d.resource_id)) {
            return Err(resp::ERR_INVALID_PARAMETER);
        }
        let mut target = self
            .resources
            .remove(&list.target)
            .ok_or(resp::ERR_INVALID_RESOURCE_ID)?;
        let result = self.compose_into(list, &mut target);
        self.resources.insert(list.target, target);
        result
    }

    fn compose_into(&self, list: &CompositionList, target: &mut Resource) -> Result<(), u32> {
        let resources = &self.resources;
        let Some(renderer) = &self.renderer else {
            return compose_cpu(
                list,
                target.storage.bytes_mut(),
                target.width,
                target.height,
                |id| {
                    resources.get(&id).map(|r| Image {
                        pixels: r.storage.bytes(),
                        width: r.width,
                        height: r.height,
                        opaque: r.format == Format::B8G8R8X8,
                    })
                },
            )
            .map_err(|_| resp::ERR_INVALID_PARAMETER);
        };
        let pieces = plan(list, target.width, target.height, |id| {
            resources.get(&id).map(|r| (r.width, r.height))
        })
        .map_err(|_| resp::ERR_INVALID_PARAMETER)?;
        let target_buffer = target.storage.gpu().ok_or(resp::ERR_UNSPEC)?;
        let mut steps = Vec::with_capacity(pieces.len());
        for piece in pieces {
            let draw = &list.draws[piece.draw];
            let source = &resources[&draw.resource_id];
            steps.push(Step::Compose {
                target: target_buffer,
                target_stride: target.width,
                source: source.storage.gpu().ok_or(resp::ERR_UNSPEC)?,
                source_stride: source.width,
                area: piece.area,
                source_rect: (
                    draw.source.x,
                    draw.source.y,
                    draw.source.width,
                    draw.source.height,
                ),
                at: (draw.x, draw.y),
                size: draw.target_size(),
                opacity: draw.opacity,
                opaque: source.format == Format::B8G8R8X8 || draw.opaque,
            });
        }
        renderer.run(&self.desktop, steps).map_err(|error| {
            eprintln!("gpud: {}: composition failed: {error}", self.desktop);
            resp::ERR_UNSPEC
        })
    }
}
