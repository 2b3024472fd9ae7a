// BGRA → I420 (BT.601 limited range, chroma averaged over 2×2), the GPU
// twin of `compose::i420_cpu`: integer math, so both give the same bytes.
// One invocation converts an 8×2 block: two words of Y per row, one word
// each of U and V. Width must be a multiple of 8, height even.

struct Params {
    width: u32,
    height: u32,
}

@group(0) @binding(0) var<storage, read> bgra: array<u32>;
@group(0) @binding(1) var<storage, read_write> planes: array<u32>;
var<push_constant> params: Params;

fn rgb(x: u32, y: u32) -> vec3<i32> {
    let p = bgra[y * params.width + x];
    return vec3<i32>(i32((p >> 16u) & 255u), i32((p >> 8u) & 255u), i32(p & 255u));
}

fn luma(c: vec3<i32>) -> u32 {
    return u32(((66 * c.x + 129 * c.y + 25 * c.z + 128) >> 8u) + 16);
}

@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let x0 = id.x * 8u;
    let y0 = id.y * 2u;
    if (x0 >= params.width || y0 >= params.height) {
        return;
    }
    let w = params.width;
    for (var row = 0u; row < 2u; row++) {
        for (var half = 0u; half < 2u; half++) {
            var word = 0u;
            for (var i = 0u; i < 4u; i++) {
                word = word | (luma(rgb(x0 + half * 4u + i, y0 + row)) << (8u * i));
            }
            planes[((y0 + row) * w + x0 + half * 4u) / 4u] = word;
        }
    }
    var u = 0u;
    var v = 0u;
    for (var b = 0u; b < 4u; b++) {
        let bx = x0 + b * 2u;
        let sum = rgb(bx, y0) + rgb(bx + 1u, y0) + rgb(bx, y0 + 1u) + rgb(bx + 1u, y0 + 1u);
        let c = (sum + vec3<i32>(2)) / vec3<i32>(4);
        u = u | (u32(((-38 * c.x - 74 * c.y + 112 * c.z + 128) >> 8u) + 128) << (8u * b));
        v = v | (u32(((112 * c.x - 94 * c.y - 18 * c.z + 128) >> 8u) + 128) << (8u * b));
    }
    let luma_words = w * params.height / 4u;
    let chroma = ((y0 / 2u) * (w / 2u) + x0 / 2u) / 4u;
    planes[luma_words + chroma] = u;
    planes[luma_words + luma_words / 4u + chroma] = v;
}
