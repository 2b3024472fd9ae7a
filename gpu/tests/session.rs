//! A guest's session: real memfd backings, exact pixels after transfers,
//! the ledger against budgets, and isolation — one guest misbehaving in
//! every way the issue lists while eight others keep working — with the
//! ledger back at zero when every guest is gone.

mod common;
use common::{memfd, renderer, unsealed_memfd};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use flotilla_gpu::compose::{i420_cpu, CompositionList, Draw};
use flotilla_gpu::protocol::{build, resp, Format, MemEntry, Rect};
use flotilla_gpu::render::Renderer;
use flotilla_gpu::session::{Ledger, Session, CAPSET_COMPOSE};

fn answer(response: &[u8]) -> u32 {
    u32::from_le_bytes(response[0..4].try_into().unwrap())
}

fn rect(x: u32, y: u32, width: u32, height: u32) -> Rect {
    Rect {
        x,
        y,
        width,
        height,
    }
}

/// A guest image: pixel (x, y) of desktop `seed` is 4 known bytes.
fn image(seed: u8, width: u32, height: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    for y in 0..height {
        for x in 0..width {
            bytes.extend_from_slice(&[seed, x as u8, y as u8, 0xff]);
        }
    }
    bytes
}

/// Creates resource 1 (`width`×`height`); its image and the memory entry
/// that holds all of it.
fn create(session: &mut Session, seed: u8, width: u32, height: u32) -> (Vec<u8>, MemEntry) {
    let create = session.handle(
        &build::resource_create_2d(1, Format::B8G8R8A8, width, height),
        vec![],
    );
    assert_eq!(answer(&create), resp::OK_NODATA);
    let bytes = image(seed, width, height);
    let entry = MemEntry {
        offset: 0,
        length: bytes.len() as u32,
    };
    (bytes, entry)
}

/// Creates resource 1 (`width`×`height`), backs it with `image`, transfers
/// it all; returns the last answer.
fn upload(session: &mut Session, seed: u8, width: u32, height: u32) -> u32 {
    let (bytes, entry) = create(session, seed, width, height);
    let attach = session.handle(&build::attach_backing(1, &[entry]), vec![memfd(&bytes)]);
    assert_eq!(answer(&attach), resp::OK_NODATA);
    answer(&session.handle(
        &build::transfer_to_host_2d(rect(0, 0, width, height), 0, 1),
        vec![],
    ))
}

#[test]
fn a_transfer_copies_exactly_the_damaged_rectangle() {
    transfer_and_compose(None);
}

#[test]
fn a_transfer_copies_exactly_the_damaged_rectangle_on_the_gpu() {
    if let Some(renderer) = renderer() {
        transfer_and_compose(Some(renderer));
    }
}

fn transfer_and_compose(renderer: Option<Arc<Renderer>>) {
    let ledger = Arc::new(Ledger::default());
    let on_gpu = renderer.is_some();
    let mut session = Session::with_renderer("dt-1", 1 << 20, ledger.clone(), 1280, 800, renderer);
    assert_eq!(session.on_gpu(), on_gpu);
    let (width, height) = (8, 4);
    let create = session.handle(
        &build::resource_create_2d(7, Format::B8G8R8X8, width, height),
        vec![],
    );
    assert_eq!(answer(&create), resp::OK_NODATA);
    // The backing: two entries, one memfd each, split mid-row.
    let guest = image(9, width, height);
    let (first, second) = guest.split_at(40);
    let entries = [
        MemEntry {
            offset: 0,
            length: first.len() as u32,
        },
        MemEntry {
            offset: 4096,
            length: second.len() as u32,
        },
    ];
    let mut padded = vec![0u8; 4096];
    padded.extend_from_slice(second);
    let attach = session.handle(
        &build::attach_backing(7, &entries),
        vec![memfd(first), memfd(&padded)],
    );
    assert_eq!(answer(&attach), resp::OK_NODATA);
    // Only a 3×2 rectangle at (2, 1): the rest stays zero.
    let stride = width as usize * 4;
    let offset = (stride + 2 * 4) as u64;
    let transfer = session.handle(
        &build::transfer_to_host_2d(rect(2, 1, 3, 2), offset, 7),
        vec![],
    );
    assert_eq!(answer(&transfer), resp::OK_NODATA);
    assert_eq!(session.resource_info(7), Some((Format::B8G8R8X8, 8, 4)));
    let pixels = session.pixels(7).unwrap();
    for y in 0..height as usize {
        for x in 0..width as usize {
            let at = y * stride + x * 4;
            let inside = (2..5).contains(&x) && (1..3).contains(&y);
            let expected: [u8; 4] = if inside {
                [9, x as u8, y as u8, 0xff]
            } else {
                [0; 4]
            };
            assert_eq!(pixels[at..at + 4], expected, "pixel ({x}, {y})");
        }
    }
    // The ledger holds what the session allocated: exactly the pixels on
    // the CPU, the driver's allocation size on a GPU.
    assert_eq!(ledger.total_charged(), session.charged());
    if !on_gpu {
        assert_eq!(ledger.total_charged(), u64::from(width * height * 4));
    }
    assert!(ledger.total_charged() >= u64::from(width * height * 4));
    // Scanout, flush, display info, capsets, contexts.
    assert_eq!(
        answer(&session.handle(&build::set_scanout(rect(0, 0, 8, 4), 0, 7), vec![])),
        resp::OK_NODATA
    );
    assert_eq!(session.scanout(0), Some((7, rect(0, 0, 8, 4))));
    assert_eq!(
        answer(&session.handle(&build::resource_flush(rect(0, 0, 8, 4), 7), vec![])),
        resp::OK_NODATA
    );
    let info = session.handle(&build::get_display_info(), vec![]);
    assert_eq!(answer(&info), resp::OK_DISPLAY_INFO);
    assert_eq!(&info[32..40], &[0x00, 0x05, 0, 0, 0x20, 0x03, 0, 0]);
    let capset = session.handle(&build::get_capset_info(0), vec![]);
    assert_eq!(answer(&capset), resp::OK_CAPSET_INFO);
    assert_eq!(&capset[24..28], &CAPSET_COMPOSE.to_le_bytes());
    assert_eq!(
        answer(&session.handle(&build::get_capset_info(1), vec![])),
        resp::ERR_INVALID_PARAMETER
    );
    assert_eq!(
        answer(&session.handle(&build::ctx_create(3, CAPSET_COMPOSE, "c"), vec![])),
        resp::OK_NODATA
    );
    assert_eq!(
        answer(&session.handle(&build::ctx_create(3, CAPSET_COMPOSE, "c"), vec![])),
        resp::ERR_INVALID_CONTEXT_ID
    );
    assert_eq!(
        answer(&session.handle(&build::ctx_attach_resource(3, 7), vec![])),
        resp::OK_NODATA
    );
    assert_eq!(
        answer(&session.handle(&build::ctx_attach_resource(4, 7), vec![])),
        resp::ERR_INVALID_CONTEXT_ID
    );
    // Compose resource 7 (8×4) twice onto a 16×4 scanout target, with a
    // fence: the answer comes when it is done, the fence echoed.
    assert_eq!(
        answer(&session.handle(
            &build::resource_create_2d(8, Format::B8G8R8A8, 16, 4),
            vec![]
        )),
        resp::OK_NODATA
    );
    let list = CompositionList {
        target: 8,
        damage: vec![rect(0, 0, 16, 4)],
        draws: vec![
            Draw {
                size: None,
                resource_id: 7,
                source: rect(0, 0, 8, 4),
                x: 0,
                y: 0,
                opacity: 255,
                clip: rect(0, 0, 16, 4),
                opaque: false,
            },
            Draw {
                size: None,
                resource_id: 7,
                source: rect(0, 0, 8, 4),
                x: 8,
                y: 0,
                opacity: 255,
                clip: rect(0, 0, 16, 4),
                opaque: false,
            },
        ],
    };
    let composed = session.handle(&build::submit_3d(3, Some(99), &list.encode()), vec![]);
    assert_eq!(answer(&composed), resp::OK_NODATA);
    assert_eq!(u64::from_le_bytes(composed[8..16].try_into().unwrap()), 99);
    let source = session.pixels(7).unwrap().to_vec();
    let target = session.pixels(8).unwrap().to_vec();
    for y in 0..4usize {
        for x in 0..16usize {
            let s = (y * 8 + x % 8) * 4;
            let t = (y * 16 + x) * 4;
            // B8G8R8X8 sources count as opaque where alpha was transferred.
            let alpha = u32::from(source[s + 3]);
            for c in 0..3 {
                let expected = (u32::from(source[s + c]) * alpha + 127) / 255;
                assert_eq!(u32::from(target[t + c]), expected, "({x}, {y}) channel {c}");
            }
        }
    }
    assert_eq!(
        answer(&session.handle(&build::set_scanout(rect(0, 0, 16, 4), 0, 8), vec![])),
        resp::OK_NODATA
    );
    assert_eq!(session.scanout_i420(), Some(i420_cpu(&target, 16, 4)));
    // A flush only marks the frame new: nothing is converted until the
    // frame is read, and one read converts all flushed since, in one job.
    let (sequence, conversions) = (session.frame_sequence().unwrap(), session.conversions());
    let mut moved = list.clone();
    moved.draws[1].x = 4;
    assert_eq!(
        answer(&session.handle(&build::submit_3d(3, None, &moved.encode()), vec![])),
        resp::OK_NODATA
    );
    let before = target;
    let target = session.pixels(8).unwrap().to_vec();
    assert_ne!(target, before, "the second list changes pixels");
    for area in [rect(0, 0, 8, 2), rect(8, 2, 8, 2), rect(0, 0, 16, 4)] {
        assert_eq!(
            answer(&session.handle(&build::resource_flush(area, 8), vec![])),
            resp::OK_NODATA
        );
    }
    assert_eq!(session.frame_sequence(), Some(sequence + 3));
    assert_eq!(session.conversions(), conversions);
    let (frame, _, _, read) = session.frame().unwrap();
    assert_eq!(frame, i420_cpu(&target, 16, 4).as_slice());
    assert_eq!(read, sequence + 3);
    assert_eq!(session.conversions(), conversions + 1);
    session.frame().unwrap();
    assert_eq!(session.conversions(), conversions + 1, "nothing new");
    assert_eq!(
        answer(&session.handle(&build::ctx_destroy(3), vec![])),
        resp::OK_NODATA
    );
    assert_eq!(
        answer(&session.handle(&build::resource_unref(8), vec![])),
        resp::OK_NODATA
    );
    // Unref frees the charge and the scanout.
    assert_eq!(
        answer(&session.handle(&build::resource_unref(7), vec![])),
        resp::OK_NODATA
    );
    assert_eq!(session.scanout(0), None);
    assert_eq!(ledger.total_charged(), 0);
}

#[test]
fn a_misbehaving_guest_gets_errors_while_eight_others_render() {
    misbehaving_guest(None);
}

#[test]
fn a_misbehaving_guest_gets_errors_while_eight_others_render_on_the_gpu() {
    if let Some(renderer) = renderer() {
        misbehaving_guest(Some(renderer));
    }
}

fn misbehaving_guest(renderer: Option<Arc<Renderer>>) {
    let ledger = Arc::new(Ledger::default());
    // The bad guest's budget is exactly one 64×64 resource; the good ones
    // have room to render.
    let budget = 64 * 64 * 4;
    let good_budget = 1 << 20;
    let session = |name: &str, budget: u64| {
        Session::with_renderer(name, budget, ledger.clone(), 1280, 800, renderer.clone())
    };
    let mut good: Vec<Session> = (0..8)
        .map(|i| session(&format!("dt-good-{i}"), good_budget))
        .collect();
    let mut bad = session("dt-bad", budget);
    for (i, session) in good.iter_mut().enumerate() {
        assert_eq!(upload(session, i as u8, 64, 64), resp::OK_NODATA);
    }
    // Garbage of every length.
    for length in 0..64 {
        let garbage: Vec<u8> = (0..length).map(|i| (i * 37 + 11) as u8).collect();
        let reply = bad.handle(&garbage, vec![]);
        assert!(answer(&reply) >= resp::ERR_UNSPEC, "{garbage:?}");
    }
    // Over its budget: 64×64 fits, one more pixel does not.
    assert_eq!(
        answer(&bad.handle(
            &build::resource_create_2d(1, Format::B8G8R8A8, 64, 64),
            vec![]
        )),
        resp::OK_NODATA
    );
    assert_eq!(
        answer(&bad.handle(
            &build::resource_create_2d(2, Format::B8G8R8A8, 1, 1),
            vec![]
        )),
        resp::ERR_OUT_OF_MEMORY
    );
    // The same id twice; another desktop's resource (ids are per guest: 1
    // of a good desktop is not the bad one's to touch, and its own 1 is
    // its own); an id it never made.
    assert_eq!(
        answer(&bad.handle(
            &build::resource_create_2d(1, Format::B8G8R8A8, 1, 1),
            vec![]
        )),
        resp::ERR_INVALID_RESOURCE_ID
    );
    assert_eq!(
        answer(&bad.handle(&build::resource_flush(rect(0, 0, 1, 1), 99), vec![])),
        resp::ERR_INVALID_RESOURCE_ID
    );
    // A descriptor of the wrong kind (a pipe), a range past the file, an
    // empty entry.
    let mut pipe = [0; 2];
    // SAFETY: pipe fills the array; both ends are owned below.
    unsafe { libc::pipe(pipe.as_mut_ptr()) };
    // SAFETY: fresh descriptors.
    let (read, _write) = unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
    let entry = MemEntry {
        offset: 0,
        length: 64,
    };
    assert_eq!(
        answer(&bad.handle(&build::attach_backing(1, &[entry]), vec![read])),
        resp::ERR_INVALID_PARAMETER
    );
    let past = MemEntry {
        offset: 4096,
        length: 64,
    };
    assert_eq!(
        answer(&bad.handle(&build::attach_backing(1, &[past]), vec![memfd(&[0; 128])])),
        resp::ERR_INVALID_PARAMETER
    );
    let empty = MemEntry {
        offset: 0,
        length: 0,
    };
    assert_eq!(
        answer(&bad.handle(&build::attach_backing(1, &[empty]), vec![memfd(&[0; 128])])),
        resp::ERR_INVALID_PARAMETER
    );
    // Transfers without a backing, with huge and overlapping-the-edge
    // rects, and reading past a small backing.
    assert_eq!(
        answer(&bad.handle(
            &build::transfer_to_host_2d(rect(0, 0, 64, 64), 0, 1),
            vec![]
        )),
        resp::ERR_INVALID_PARAMETER
    );
    let small = MemEntry {
        offset: 0,
        length: 256,
    };
    assert_eq!(
        answer(&bad.handle(&build::attach_backing(1, &[small]), vec![memfd(&[7; 256])])),
        resp::OK_NODATA
    );
    for r in [
        rect(0, 0, 65, 1),
        rect(63, 63, 2, 2),
        rect(0, 0, u32::MAX, 1),
        rect(u32::MAX, 0, 1, 1),
    ] {
        let reply = bad.handle(&build::transfer_to_host_2d(r, 0, 1), vec![]);
        assert_eq!(answer(&reply), resp::ERR_INVALID_PARAMETER, "{r:?}");
    }
    assert_eq!(
        answer(&bad.handle(&build::transfer_to_host_2d(rect(0, 0, 64, 2), 0, 1), vec![])),
        resp::ERR_INVALID_PARAMETER
    );
    assert_eq!(
        answer(&bad.handle(
            &build::transfer_to_host_2d(rect(0, 0, 8, 8), u64::MAX - 3, 1),
            vec![]
        )),
        resp::ERR_INVALID_PARAMETER
    );
    // A second scanout; a scanout rect past the resource.
    assert_eq!(
        answer(&bad.handle(&build::set_scanout(rect(0, 0, 1, 1), 1, 1), vec![])),
        resp::ERR_INVALID_SCANOUT_ID
    );
    assert_eq!(
        answer(&bad.handle(&build::set_scanout(rect(0, 0, 65, 1), 0, 1), vec![])),
        resp::ERR_INVALID_PARAMETER
    );
    // Composition: no such context, a context of another type, garbage
    // instead of a list, a list drawing its target onto itself.
    assert_eq!(
        answer(&bad.handle(&build::submit_3d(1, None, b"x"), vec![])),
        resp::ERR_INVALID_CONTEXT_ID
    );
    assert_eq!(
        answer(&bad.handle(&build::ctx_create(1, 7, "other"), vec![])),
        resp::ERR_INVALID_PARAMETER
    );
    assert_eq!(
        answer(&bad.handle(&build::ctx_create(1, CAPSET_COMPOSE, "c"), vec![])),
        resp::OK_NODATA
    );
    assert_eq!(
        answer(&bad.handle(&build::submit_3d(1, None, b"garbage"), vec![])),
        resp::ERR_INVALID_PARAMETER
    );
    let onto_itself = CompositionList {
        target: 1,
        damage: vec![rect(0, 0, 1, 1)],
        draws: vec![Draw {
            size: None,
            resource_id: 1,
            source: rect(0, 0, 1, 1),
            x: 0,
            y: 0,
            opacity: 255,
            clip: rect(0, 0, 1, 1),
            opaque: false,
        }],
    };
    assert_eq!(
        answer(&bad.handle(&build::submit_3d(1, None, &onto_itself.encode()), vec![])),
        resp::ERR_INVALID_PARAMETER
    );

    // The others kept their pixels and go on rendering: each composes its
    // image onto a scanout and gets exactly its own I420 frame.
    for (i, session) in good.iter_mut().enumerate() {
        assert!(
            session.pixels(1).unwrap() == image(i as u8, 64, 64).as_slice(),
            "desktop {i}'s pixels changed"
        );
        let reply = session.handle(&build::transfer_to_host_2d(rect(1, 1, 2, 2), 0, 1), vec![]);
        assert_eq!(answer(&reply), resp::OK_NODATA);
        let own = session.pixels(1).unwrap().to_vec();
        let list = CompositionList {
            target: 2,
            damage: vec![rect(0, 0, 64, 64)],
            draws: vec![Draw {
                size: None,
                resource_id: 1,
                source: rect(0, 0, 64, 64),
                x: 0,
                y: 0,
                opacity: 255,
                clip: rect(0, 0, 64, 64),
                opaque: false,
            }],
        };
        for command in [
            build::resource_create_2d(2, Format::B8G8R8A8, 64, 64),
            build::ctx_create(1, CAPSET_COMPOSE, "c"),
            build::set_scanout(rect(0, 0, 64, 64), 0, 2),
            build::submit_3d(1, Some(5), &list.encode()),
            build::resource_flush(rect(0, 0, 64, 64), 2),
        ] {
            assert_eq!(answer(&session.handle(&command, vec![])), resp::OK_NODATA);
        }
        assert!(
            session.pixels(2).unwrap() == own.as_slice(),
            "desktop {i} composed something else"
        );
        assert!(
            session.scanout_i420() == Some(i420_cpu(&own, 64, 64)),
            "desktop {i}'s frame is wrong"
        );
    }
    // The ledger equals the sum of live resources.
    let accounts = ledger.accounts();
    assert_eq!(accounts.len(), 9);
    assert_eq!(accounts["dt-bad"].charged_bytes, budget);
    assert_eq!(accounts["dt-bad"].charged_bytes, bad.charged());
    for (i, session) in good.iter().enumerate() {
        let account = accounts[&format!("dt-good-{i}")];
        assert_eq!(account.charged_bytes, session.charged());
        assert_eq!(account.budget_bytes, good_budget);
        // Two 64×64 resources and a 64×64 I420 frame, at least.
        assert!(account.charged_bytes >= 2 * 64 * 64 * 4 + 64 * 64 * 3 / 2);
    }
    let sum: u64 = good.iter().map(Session::charged).sum::<u64>() + bad.charged();
    assert_eq!(ledger.total_charged(), sum);
    // Every guest gone: nothing charged, no account left.
    drop(bad);
    drop(good);
    assert_eq!(ledger.total_charged(), 0);
    assert!(ledger.accounts().is_empty());
}

#[test]
fn a_guest_cannot_shrink_a_backing_under_gpud() {
    let ledger = Arc::new(Ledger::default());
    let mut session = Session::with_renderer("dt-shrink", 1 << 20, ledger, 1280, 800, None);
    let (width, height) = (16, 16);
    let (bytes, entry) = create(&mut session, 3, width, height);
    // A memfd its guest may still shrink is refused: shrunk after the
    // attach, gpud's next read of it would be a SIGBUS in the node agent.
    let unsealed = session.handle(
        &build::attach_backing(1, &[entry]),
        vec![unsealed_memfd(&bytes)],
    );
    assert_eq!(answer(&unsealed), resp::ERR_INVALID_PARAMETER);
    // A sealed one is mapped; the guest's own copy of the descriptor can
    // no longer shrink it, so every later transfer reads real pages.
    let sealed = memfd(&bytes);
    // SAFETY: dup of a descriptor we own; the copy is owned below.
    let guest_copy = unsafe { OwnedFd::from_raw_fd(libc::dup(sealed.as_raw_fd())) };
    let attach = session.handle(&build::attach_backing(1, &[entry]), vec![sealed]);
    assert_eq!(answer(&attach), resp::OK_NODATA);
    // SAFETY: ftruncate on a descriptor we own.
    let shrunk = unsafe { libc::ftruncate(guest_copy.as_raw_fd(), 0) };
    assert_eq!(shrunk, -1, "a sealed backing was shrunk");
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EPERM)
    );
    let transfer = session.handle(
        &build::transfer_to_host_2d(rect(0, 0, width, height), 0, 1),
        vec![],
    );
    assert_eq!(answer(&transfer), resp::OK_NODATA);
}

/// Every backing entry is its own mapping in the node agent, whose
/// `vm.max_map_count` all desktops share: a guest maps at most
/// `MAX_MAPPINGS` entries at once, over all its resources.
#[test]
fn a_guest_maps_a_bounded_number_of_backing_entries() {
    use flotilla_gpu::session::MAX_MAPPINGS;
    let ledger = Arc::new(Ledger::default());
    let mut session = Session::with_renderer("dt-maps", 64 << 20, ledger, 1280, 800, None);
    for id in [1, 2] {
        let create = build::resource_create_2d(id, Format::B8G8R8A8, 16, 16);
        assert_eq!(answer(&session.handle(&create, vec![])), resp::OK_NODATA);
    }
    let backing = memfd(&[7; 4096]);
    let entries = |count: usize| {
        let entry = MemEntry {
            offset: 0,
            length: 16,
        };
        let fds: Vec<OwnedFd> = (0..count)
            // SAFETY: dup of a descriptor we own; each copy is owned.
            .map(|_| unsafe { OwnedFd::from_raw_fd(libc::dup(backing.as_raw_fd())) })
            .collect();
        (vec![entry; count], fds)
    };
    let first = MAX_MAPPINGS * 3 / 4;
    let (list, fds) = entries(first);
    assert_eq!(
        answer(&session.handle(&build::attach_backing(1, &list), fds)),
        resp::OK_NODATA
    );
    let (list, fds) = entries(MAX_MAPPINGS - first + 1);
    assert_eq!(
        answer(&session.handle(&build::attach_backing(2, &list), fds)),
        resp::ERR_OUT_OF_MEMORY
    );
    // Detaching gives the mappings back.
    let detach = session.handle(&build::detach_backing(1), vec![]);
    assert_eq!(answer(&detach), resp::OK_NODATA);
    let (list, fds) = entries(MAX_MAPPINGS - first + 1);
    assert_eq!(
        answer(&session.handle(&build::attach_backing(2, &list), fds)),
        resp::OK_NODATA
    );
}
