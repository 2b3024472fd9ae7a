// One piece of a composition list (see `compose::plan`): draw a source
// buffer "over" a rectangle of the target, alpha scaled by opacity —
// the GPU twin of `compose::compose_piece`, integer-exact like it.
// Pixels are BGRA bytes, one u32 each (B in the low byte).

struct Params {
    x0: u32,
    y0: u32,
    width: u32,
    height: u32,
    target_stride: u32,
    source_stride: u32,
    // The draw's source rectangle, its top left on the target and its
    // size there: source column = source_x + ((2 (x - draw_x) + 1) ×
    // source_width) / (2 target_width), the pixel under the centre
    // (`Draw::source_at`); unscaled, source_x + x - draw_x.
    source_x: u32,
    source_y: u32,
    source_width: u32,
    source_height: u32,
    draw_x: i32,
    draw_y: i32,
    target_width: u32,
    target_height: u32,
    opacity: u32,
    // 1: the source's fourth byte is padding (B8G8R8X8), every pixel opaque.
    opaque: u32,
}

@group(0) @binding(0) var<storage, read_write> dest: array<u32>;
@group(1) @binding(0) var<storage, read> source: array<u32>;
var<push_constant> params: Params;

// x / 255 for x <= 65534 (all "over" computes), without a division.
fn div255(x: u32) -> u32 {
    return (x + 1u + (x >> 8u)) >> 8u;
}

fn over(s: u32, d: u32, alpha: u32) -> u32 {
    return div255(s * alpha + d * (255u - alpha) + 127u);
}

@compute @workgroup_size(256, 1)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x >= params.width || id.y >= params.height) {
        return;
    }
    let x = params.x0 + id.x;
    let y = params.y0 + id.y;
    let column = u32(i32(x) - params.draw_x);
    let row = u32(i32(y) - params.draw_y);
    let sx = params.source_x + ((2u * column + 1u) * params.source_width) / (2u * params.target_width);
    let sy = params.source_y + ((2u * row + 1u) * params.source_height) / (2u * params.target_height);
    let s = source[sy * params.source_stride + sx];
    let at = y * params.target_stride + x;
    var alpha = params.opacity;
    if (params.opaque == 0u) {
        alpha = div255((s >> 24u) * params.opacity + 127u);
    }
    if (alpha == 0u) {
        return;
    }
    if (alpha == 255u) {
        dest[at] = s | 0xff000000u;
        return;
    }
    let d = dest[at];
    var out = over(255u, d >> 24u, alpha) << 24u;
    for (var c = 0u; c < 3u; c++) {
        let shift = 8u * c;
        out = out | (over((s >> shift) & 255u, (d >> shift) & 255u, alpha) << shift);
    }
    dest[at] = out;
}
