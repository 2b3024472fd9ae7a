//! virtio-gpu wire conformance: every command gpud takes, byte for byte,
//! and every error path the bytes alone can show, with the spec's error
//! response. Plus arbitrary bytes (proptest) that must never panic.

use flotilla_gpu::protocol::{
    build, cmd, decode, encode, encode_error, frame, resp, Command, DisplayMode, Format, Header,
    MemEntry, Rect, Response, FLAG_FENCE, FLAG_INFO_RING_IDX, HEADER_BYTES, MAX_MEM_ENTRIES,
    MAX_SCANOUTS, MAX_SUBMIT_BYTES,
};
use proptest::prelude::*;

fn rect(x: u32, y: u32, width: u32, height: u32) -> Rect {
    Rect {
        x,
        y,
        width,
        height,
    }
}

/// The error response a command gets.
fn error_of(bytes: &[u8], fds: usize) -> u32 {
    decode(bytes, fds).expect_err("must be refused").response
}

#[test]
fn the_header_is_24_little_endian_bytes() {
    let bytes = build::header(cmd::SUBMIT_3D, FLAG_FENCE, 0x1122_3344_5566_7788, 7);
    assert_eq!(
        bytes,
        [
            0x07, 0x02, 0, 0, // type
            0x01, 0, 0, 0, // flags
            0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // fence_id
            0x07, 0, 0, 0, // ctx_id
            0, 0, 0, 0, // ring_idx, padding
        ]
    );
    assert_eq!(HEADER_BYTES, 24);
}

#[test]
fn every_command_decodes_from_its_exact_bytes() {
    let cases: Vec<(Vec<u8>, usize, Command)> = vec![
        (build::get_display_info(), 0, Command::GetDisplayInfo),
        (
            build::resource_create_2d(5, Format::B8G8R8A8, 1280, 800),
            0,
            Command::ResourceCreate2d {
                resource_id: 5,
                format: Format::B8G8R8A8,
                width: 1280,
                height: 800,
            },
        ),
        (
            build::resource_unref(5),
            0,
            Command::ResourceUnref { resource_id: 5 },
        ),
        (
            build::set_scanout(rect(0, 0, 1280, 800), 0, 5),
            0,
            Command::SetScanout {
                rect: rect(0, 0, 1280, 800),
                scanout_id: 0,
                resource_id: 5,
            },
        ),
        (
            build::set_scanout(rect(0, 0, 0, 0), 3, 0),
            0,
            Command::SetScanout {
                rect: rect(0, 0, 0, 0),
                scanout_id: 3,
                resource_id: 0,
            },
        ),
        (
            build::resource_flush(rect(1, 2, 3, 4), 5),
            0,
            Command::ResourceFlush {
                rect: rect(1, 2, 3, 4),
                resource_id: 5,
            },
        ),
        (
            build::transfer_to_host_2d(rect(0, 10, 1280, 20), 51_200, 5),
            0,
            Command::TransferToHost2d {
                rect: rect(0, 10, 1280, 20),
                offset: 51_200,
                resource_id: 5,
            },
        ),
        (
            build::attach_backing(
                5,
                &[
                    MemEntry {
                        offset: 0,
                        length: 4096,
                    },
                    MemEntry {
                        offset: 8192,
                        length: 100,
                    },
                ],
            ),
            2,
            Command::ResourceAttachBacking {
                resource_id: 5,
                entries: vec![
                    MemEntry {
                        offset: 0,
                        length: 4096,
                    },
                    MemEntry {
                        offset: 8192,
                        length: 100,
                    },
                ],
            },
        ),
        (
            build::detach_backing(5),
            0,
            Command::ResourceDetachBacking { resource_id: 5 },
        ),
        (
            build::get_capset_info(0),
            0,
            Command::GetCapsetInfo { capset_index: 0 },
        ),
        (
            build::get_capset(0x4643, 1),
            0,
            Command::GetCapset {
                capset_id: 0x4643,
                capset_version: 1,
            },
        ),
        (
            build::ctx_create(9, 0x4643, "compositor"),
            0,
            Command::CtxCreate {
                context_init: 0x4643,
                debug_name: "compositor".to_owned(),
            },
        ),
        (build::ctx_destroy(9), 0, Command::CtxDestroy),
        (
            build::ctx_attach_resource(9, 5),
            0,
            Command::CtxAttachResource { resource_id: 5 },
        ),
        (
            build::ctx_detach_resource(9, 5),
            0,
            Command::CtxDetachResource { resource_id: 5 },
        ),
        (
            build::submit_3d(9, Some(42), b"draw"),
            0,
            Command::Submit3d {
                commands: b"draw".to_vec(),
            },
        ),
    ];
    for (bytes, fds, expected) in cases {
        let (header, command) = decode(&bytes, fds).unwrap_or_else(|e| panic!("{expected:?}: {e}"));
        assert_eq!(command, expected);
        assert_eq!(
            header.kind,
            u32::from_le_bytes(bytes[0..4].try_into().unwrap())
        );
    }
    // Exact sizes of the fixed commands.
    assert_eq!(
        build::resource_create_2d(1, Format::R8G8B8A8, 1, 1).len(),
        40
    );
    assert_eq!(build::set_scanout(rect(0, 0, 1, 1), 0, 1).len(), 48);
    assert_eq!(build::transfer_to_host_2d(rect(0, 0, 1, 1), 0, 1).len(), 56);
    assert_eq!(build::ctx_create(1, 0, "").len(), 96);
    assert_eq!(build::submit_3d(1, None, &[1, 2, 3]).len(), 35);
}

#[test]
fn a_blob_resource_decodes_with_its_entries() {
    let mut bytes = build::header(cmd::RESOURCE_CREATE_BLOB, 0, 0, 0);
    for value in [7u32, 1, 3, 1] {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    bytes.extend_from_slice(&99u64.to_le_bytes());
    bytes.extend_from_slice(&4096u64.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    bytes.extend_from_slice(&4096u32.to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    let (_, command) = decode(&bytes, 1).unwrap();
    assert_eq!(
        command,
        Command::ResourceCreateBlob {
            resource_id: 7,
            blob_mem: 1,
            blob_flags: 3,
            blob_id: 99,
            size: 4096,
            entries: vec![MemEntry {
                offset: 0,
                length: 4096
            }],
        }
    );
    assert_eq!(error_of(&bytes, 0), resp::ERR_INVALID_PARAMETER, "no fd");
}

#[test]
fn every_error_path_gets_the_specs_answer() {
    // Too short for a header; an unknown command.
    assert_eq!(error_of(&[1, 2, 3], 0), resp::ERR_UNSPEC);
    assert_eq!(
        error_of(&build::header(0x0999, 0, 0, 0), 0),
        resp::ERR_UNSPEC
    );
    // Wrong sizes: one byte short, one byte long.
    let create = build::resource_create_2d(1, Format::B8G8R8X8, 64, 64);
    assert_eq!(
        error_of(&create[..create.len() - 1], 0),
        resp::ERR_INVALID_PARAMETER
    );
    let mut long = create.clone();
    long.push(0);
    assert_eq!(error_of(&long, 0), resp::ERR_INVALID_PARAMETER);
    // Unknown flags; a ring out of range.
    let mut flagged = create.clone();
    flagged[4] = 0x80;
    assert_eq!(error_of(&flagged, 0), resp::ERR_INVALID_PARAMETER);
    let mut ring = build::submit_3d(1, None, b"x");
    ring[4] = FLAG_INFO_RING_IDX as u8;
    ring[20] = 200;
    assert_eq!(error_of(&ring, 0), resp::ERR_INVALID_PARAMETER);
    // Resource 0, a bad format, bad dimensions.
    assert_eq!(
        error_of(&build::resource_create_2d(0, Format::B8G8R8A8, 1, 1), 0),
        resp::ERR_INVALID_RESOURCE_ID
    );
    let mut format = create.clone();
    format[28..32].copy_from_slice(&999u32.to_le_bytes());
    assert_eq!(error_of(&format, 0), resp::ERR_INVALID_PARAMETER);
    for (width, height) in [(0, 1), (1, 0), (16_385, 1), (1, u32::MAX)] {
        assert_eq!(
            error_of(
                &build::resource_create_2d(1, Format::B8G8R8A8, width, height),
                0
            ),
            resp::ERR_INVALID_PARAMETER,
            "{width}×{height}"
        );
    }
    for bytes in [
        build::resource_unref(0),
        build::resource_flush(rect(0, 0, 1, 1), 0),
        build::transfer_to_host_2d(rect(0, 0, 1, 1), 0, 0),
        build::detach_backing(0),
        build::ctx_attach_resource(1, 0),
        build::ctx_detach_resource(1, 0),
    ] {
        assert_eq!(error_of(&bytes, 0), resp::ERR_INVALID_RESOURCE_ID);
    }
    // Scanouts: only 0..16.
    assert_eq!(
        error_of(&build::set_scanout(rect(0, 0, 1, 1), MAX_SCANOUTS, 1), 0),
        resp::ERR_INVALID_SCANOUT_ID
    );
    // Rectangles that overflow 32 bits.
    for bytes in [
        build::set_scanout(rect(u32::MAX, 0, 2, 1), 0, 1),
        build::resource_flush(rect(0, u32::MAX, 1, 2), 1),
        build::transfer_to_host_2d(rect(u32::MAX - 1, 0, 5, 1), 0, 1),
    ] {
        assert_eq!(error_of(&bytes, 0), resp::ERR_INVALID_PARAMETER);
    }
    // Context commands on context 0.
    for bytes in [
        build::ctx_create(0, 0, "x"),
        build::ctx_destroy(0),
        build::ctx_attach_resource(0, 1),
        build::submit_3d(0, None, b"x"),
    ] {
        assert_eq!(error_of(&bytes, 0), resp::ERR_INVALID_CONTEXT_ID);
    }
    // A debug name longer than its field.
    let mut name = build::ctx_create(1, 0, "x");
    name[24..28].copy_from_slice(&65u32.to_le_bytes());
    assert_eq!(error_of(&name, 0), resp::ERR_INVALID_PARAMETER);
    // Backing: no entries, too many, entries and fds that disagree, a
    // count the bytes do not back.
    let entry = MemEntry {
        offset: 0,
        length: 16,
    };
    assert_eq!(
        error_of(&build::attach_backing(1, &[]), 0),
        resp::ERR_INVALID_PARAMETER
    );
    assert_eq!(
        error_of(&build::attach_backing(1, &[entry]), 0),
        resp::ERR_INVALID_PARAMETER
    );
    assert_eq!(
        error_of(&build::attach_backing(1, &[entry]), 2),
        resp::ERR_INVALID_PARAMETER
    );
    let mut lying = build::attach_backing(1, &[entry]);
    lying[28..32].copy_from_slice(&(MAX_MEM_ENTRIES + 1).to_le_bytes());
    assert_eq!(error_of(&lying, 1), resp::ERR_INVALID_PARAMETER);
    let mut short = build::attach_backing(1, &[entry, entry]);
    short.truncate(short.len() - 16);
    assert_eq!(error_of(&short, 2), resp::ERR_INVALID_PARAMETER);
    // Descriptors sent with a command that takes none.
    assert_eq!(
        error_of(&build::get_display_info(), 1),
        resp::ERR_INVALID_PARAMETER
    );
    // SUBMIT_3D: empty, too big, a length the bytes do not match.
    assert_eq!(
        error_of(&build::submit_3d(1, None, b""), 0),
        resp::ERR_INVALID_PARAMETER
    );
    let mut big = build::submit_3d(1, None, b"x");
    big[24..28].copy_from_slice(&(MAX_SUBMIT_BYTES + 1).to_le_bytes());
    assert_eq!(error_of(&big, 0), resp::ERR_INVALID_PARAMETER);
    let mut mismatch = build::submit_3d(1, None, b"abcd");
    mismatch.pop();
    assert_eq!(error_of(&mismatch, 0), resp::ERR_INVALID_PARAMETER);
}

#[test]
fn responses_echo_the_fence_and_have_exact_sizes() {
    let request = Header {
        kind: cmd::SUBMIT_3D,
        flags: FLAG_FENCE | FLAG_INFO_RING_IDX,
        fence_id: 77,
        ctx_id: 3,
        ring_idx: 2,
    };
    let ok = encode(&request, &Response::NoData);
    assert_eq!(
        ok,
        [
            0x00, 0x11, 0, 0, // OK_NODATA
            0x03, 0, 0, 0, // FENCE | INFO_RING_IDX
            77, 0, 0, 0, 0, 0, 0, 0, // fence
            3, 0, 0, 0, // ctx
            2, 0, 0, 0, // ring, padding
        ]
    );
    let mut modes = [DisplayMode::default(); MAX_SCANOUTS as usize];
    modes[0] = DisplayMode {
        rect: rect(0, 0, 1280, 800),
        enabled: true,
        flags: 0,
    };
    let info = encode(&Header::default(), &Response::DisplayInfo(Box::new(modes)));
    assert_eq!(info.len(), 24 + 16 * 24);
    assert_eq!(&info[0..4], &resp::OK_DISPLAY_INFO.to_le_bytes());
    assert_eq!(
        &info[24..48],
        &[0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0x20, 3, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    );
    let capset = encode(
        &Header::default(),
        &Response::CapsetInfo {
            capset_id: 0x4643,
            max_version: 1,
            max_size: 16,
        },
    );
    assert_eq!(capset.len(), 40);
    let error = decode(&build::resource_unref(0), 0).unwrap_err();
    let bytes = encode_error(&error);
    assert_eq!(&bytes[0..4], &resp::ERR_INVALID_RESOURCE_ID.to_le_bytes());
    assert_eq!(bytes.len(), 24);
    assert_eq!(frame(&bytes)[0..4], 24u32.to_le_bytes());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    /// Arbitrary bytes and descriptor counts: an answer, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), fds in 0usize..4) {
        match decode(&bytes, fds) {
            Ok(_) => {}
            Err(error) => {
                let answer = encode_error(&error);
                prop_assert_eq!(answer.len(), HEADER_BYTES);
            }
        }
    }

    /// Arbitrary bytes behind a valid command type reach each decoder.
    #[test]
    fn arbitrary_bodies_of_known_commands_never_panic(
        kind in prop::sample::select(vec![
            cmd::GET_DISPLAY_INFO, cmd::RESOURCE_CREATE_2D, cmd::RESOURCE_UNREF,
            cmd::SET_SCANOUT, cmd::RESOURCE_FLUSH, cmd::TRANSFER_TO_HOST_2D,
            cmd::RESOURCE_ATTACH_BACKING, cmd::RESOURCE_DETACH_BACKING,
            cmd::GET_CAPSET_INFO, cmd::GET_CAPSET, cmd::RESOURCE_CREATE_BLOB,
            cmd::CTX_CREATE, cmd::CTX_DESTROY, cmd::CTX_ATTACH_RESOURCE,
            cmd::CTX_DETACH_RESOURCE, cmd::SUBMIT_3D,
        ]),
        flags in 0u32..4,
        ctx in 0u32..3,
        body in proptest::collection::vec(any::<u8>(), 0..200),
        fds in 0usize..3,
    ) {
        let mut bytes = build::header(kind, flags, 1, ctx);
        bytes.extend_from_slice(&body);
        let _ = decode(&bytes, fds);
    }

    /// Valid creates round-trip.
    #[test]
    fn valid_creates_round_trip(id in 1u32.., width in 1u32..=16_384, height in 1u32..=16_384) {
        let bytes = build::resource_create_2d(id, Format::R8G8B8A8, width, height);
        let (_, command) = decode(&bytes, 0).unwrap();
        prop_assert_eq!(command, Command::ResourceCreate2d { resource_id: id, format: Format::R8G8B8A8, width, height });
    }
}
