//! Builders of command bytes, for guests (the compositor) and tests:
//! each command exactly as the spec lays it out.

use super::*;

pub fn header(kind: u32, flags: u32, fence_id: u64, ctx_id: u32) -> Vec<u8> {
    let mut out = Vec::new();
    Header {
        kind,
        flags,
        fence_id,
        ctx_id,
        ring_idx: 0,
    }
    .write(&mut out);
    out
}

fn words(mut out: Vec<u8>, values: &[u32]) -> Vec<u8> {
    for value in values {
        out.extend_from_slice(&value.to_le_bytes());
    }
    out
}

pub fn get_display_info() -> Vec<u8> {
    header(cmd::GET_DISPLAY_INFO, 0, 0, 0)
}

pub fn resource_create_2d(resource_id: u32, format: Format, width: u32, height: u32) -> Vec<u8> {
    words(
        header(cmd::RESOURCE_CREATE_2D, 0, 0, 0),
        &[resource_id, format as u32, width, height],
    )
}

pub fn resource_unref(resource_id: u32) -> Vec<u8> {
    words(header(cmd::RESOURCE_UNREF, 0, 0, 0), &[resource_id, 0])
}

pub fn set_scanout(rect: Rect, scanout_id: u32, resource_id: u32) -> Vec<u8> {
    let mut out = header(cmd::SET_SCANOUT, 0, 0, 0);
    rect.write(&mut out);
    words(out, &[scanout_id, resource_id])
}

pub fn resource_flush(rect: Rect, resource_id: u32) -> Vec<u8> {
    let mut out = header(cmd::RESOURCE_FLUSH, 0, 0, 0);
    rect.write(&mut out);
    words(out, &[resource_id, 0])
}

pub fn transfer_to_host_2d(rect: Rect, offset: u64, resource_id: u32) -> Vec<u8> {
    let mut out = header(cmd::TRANSFER_TO_HOST_2D, 0, 0, 0);
    rect.write(&mut out);
    out.extend_from_slice(&offset.to_le_bytes());
    words(out, &[resource_id, 0])
}

pub fn attach_backing(resource_id: u32, entries: &[MemEntry]) -> Vec<u8> {
    let mut out = words(
        header(cmd::RESOURCE_ATTACH_BACKING, 0, 0, 0),
        &[resource_id, entries.len() as u32],
    );
    for entry in entries {
        out.extend_from_slice(&entry.offset.to_le_bytes());
        out = words(out, &[entry.length, 0]);
    }
    out
}

pub fn detach_backing(resource_id: u32) -> Vec<u8> {
    words(
        header(cmd::RESOURCE_DETACH_BACKING, 0, 0, 0),
        &[resource_id, 0],
    )
}

pub fn get_capset_info(index: u32) -> Vec<u8> {
    words(header(cmd::GET_CAPSET_INFO, 0, 0, 0), &[index, 0])
}

pub fn get_capset(capset_id: u32, version: u32) -> Vec<u8> {
    words(header(cmd::GET_CAPSET, 0, 0, 0), &[capset_id, version])
}

pub fn ctx_create(ctx_id: u32, context_init: u32, name: &str) -> Vec<u8> {
    let mut out = words(
        header(cmd::CTX_CREATE, 0, 0, ctx_id),
        &[name.len().min(64) as u32, context_init],
    );
    let mut padded = [0u8; 64];
    let length = name.len().min(64);
    padded[..length].copy_from_slice(&name.as_bytes()[..length]);
    out.extend_from_slice(&padded);
    out
}

pub fn ctx_destroy(ctx_id: u32) -> Vec<u8> {
    header(cmd::CTX_DESTROY, 0, 0, ctx_id)
}

pub fn ctx_attach_resource(ctx_id: u32, resource_id: u32) -> Vec<u8> {
    words(
        header(cmd::CTX_ATTACH_RESOURCE, 0, 0, ctx_id),
        &[resource_id, 0],
    )
}

pub fn ctx_detach_resource(ctx_id: u32, resource_id: u32) -> Vec<u8> {
    words(
        header(cmd::CTX_DETACH_RESOURCE, 0, 0, ctx_id),
        &[resource_id, 0],
    )
}

pub fn submit_3d(ctx_id: u32, fence_id: Option<u64>, commands: &[u8]) -> Vec<u8> {
    let flags = if fence_id.is_some() { FLAG_FENCE } else { 0 };
    let mut out = words(
        header(cmd::SUBMIT_3D, flags, fence_id.unwrap_or(0), ctx_id),
        &[commands.len() as u32, 0],
    );
    out.extend_from_slice(commands);
    out
}
