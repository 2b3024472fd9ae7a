// BGRA → I420 (BT.601 limited range, chroma averaged over 2×2) of a region
// of a frame: the GPU twin of `compose::i420_region_cpu`, integer math, so
// both give the same bytes. One invocation converts an 8×2 block (two
// words of Y per row, one word each of U and V), reading each pixel once.
// The frame's width must be a multiple of 8 and its height even.

struct Params {
    // The frame (output planes) size.
    width: u32,
    height: u32,
    // The source image: row length in pixels and the frame's origin in it.
    stride: u32,
    origin_x: u32,
    origin_y: u32,
    // The region, in 8×2 blocks.
    block_x0: u32,
    block_y0: u32,
    blocks_x: u32,
    blocks_y: u32,
}

@group(0) @binding(0) var<storage, read> bgra: array<u32>;
@group(1) @binding(0) var<storage, read_write> planes: array<u32>;
var<push_constant> params: Params;

fn rgb(x: u32, y: u32) -> vec3<i32> {
    let p = bgra[(params.origin_y + y) * params.stride + params.origin_x + x];
    return vec3<i32>(i32((p >> 16u) & 255u), i32((p >> 8u) & 255u), i32(p & 255u));
}

fn luma(c: vec3<i32>) -> u32 {
    return u32(((66 * c.x + 129 * c.y + 25 * c.z + 128) >> 8u) + 16);
}

@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x >= params.blocks_x || id.y >= params.blocks_y) {
        return;
    }
    let x0 = (params.block_x0 + id.x) * 8u;
    let y0 = (params.block_y0 + id.y) * 2u;
    let w = params.width;
    var u = 0u;
    var v = 0u;
    var luma_words = array<u32, 4>(0u, 0u, 0u, 0u);
    for (var b = 0u; b < 4u; b++) {
        let bx = x0 + b * 2u;
        let p00 = rgb(bx, y0);
        let p10 = rgb(bx + 1u, y0);
        let p01 = rgb(bx, y0 + 1u);
        let p11 = rgb(bx + 1u, y0 + 1u);
        // Word (row, half) holds Y of x0 + half * 4 .. + 4 on that row.
        let word = b / 2u;
        let shift = 16u * (b % 2u);
        luma_words[word] = luma_words[word] | (luma(p00) << shift) | (luma(p10) << (shift + 8u));
        luma_words[2u + word] = luma_words[2u + word] | (luma(p01) << shift) | (luma(p11) << (shift + 8u));
        let c = (p00 + p10 + p01 + p11 + vec3<i32>(2)) / vec3<i32>(4);
        u = u | (u32(((-38 * c.x - 74 * c.y + 112 * c.z + 128) >> 8u) + 128) << (8u * b));
        v = v | (u32(((112 * c.x - 94 * c.y - 18 * c.z + 128) >> 8u) + 128) << (8u * b));
    }
    let row0 = (y0 * w + x0) / 4u;
    let row1 = ((y0 + 1u) * w + x0) / 4u;
    planes[row0] = luma_words[0];
    planes[row0 + 1u] = luma_words[1];
    planes[row1] = luma_words[2];
    planes[row1 + 1u] = luma_words[3];
    let plane = w * params.height / 4u;
    let chroma = ((y0 / 2u) * (w / 2u) + x0 / 2u) / 4u;
    planes[plane + chroma] = u;
    planes[plane + plane / 4u + chroma] = v;
}
