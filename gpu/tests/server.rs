//! gpud over real Unix sockets: framing, descriptors passed with
//! SCM_RIGHTS, a guest that breaks the framing losing only its own
//! connection, and the ledger at zero once every guest has gone.

use std::io::Write;
mod common;
use common::memfd;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use flotilla_gpu::guest::{answer_type, Guest};
use flotilla_gpu::protocol::{build, resp, Format, MemEntry, Rect, MAX_FRAME_BYTES};
use flotilla_gpu::server::Gpud;

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn guests_talk_to_gpud_over_sockets_and_a_broken_one_hurts_only_itself() {
    let dir = tempfile::tempdir().unwrap();
    let gpud = Gpud::new(1280, 800);
    let budget = 1 << 20;
    let a_path = dir.path().join("dt-a.sock");
    let b_path = dir.path().join("dt-b.sock");
    gpud.serve_desktop(UnixListener::bind(&a_path).unwrap(), "dt-a", budget);
    gpud.serve_desktop(UnixListener::bind(&b_path).unwrap(), "dt-b", budget);

    let mut a = Guest::connect(&a_path).unwrap();
    assert_eq!(
        answer_type(&a.call(&build::get_display_info(), &[]).unwrap()),
        resp::OK_DISPLAY_INFO
    );
    let created = a
        .call(&build::resource_create_2d(1, Format::B8G8R8A8, 16, 16), &[])
        .unwrap();
    assert_eq!(answer_type(&created), resp::OK_NODATA);
    let pixels = vec![0x5a; 16 * 16 * 4];
    let backing = memfd(&pixels);
    let entry = MemEntry {
        offset: 0,
        length: pixels.len() as u32,
    };
    let attached = a
        .call(&build::attach_backing(1, &[entry]), &[backing.as_raw_fd()])
        .unwrap();
    assert_eq!(answer_type(&attached), resp::OK_NODATA);
    let full = Rect {
        x: 0,
        y: 0,
        width: 16,
        height: 16,
    };
    assert_eq!(
        answer_type(
            &a.call(&build::transfer_to_host_2d(full, 0, 1), &[])
                .unwrap()
        ),
        resp::OK_NODATA
    );
    assert_eq!(gpud.ledger.accounts()["dt-a"].charged_bytes, 16 * 16 * 4);
    // A descriptor sent with a command that takes none: an error answer,
    // the connection stays.
    let stray = memfd(b"x");
    let refused = a
        .call(&build::get_display_info(), &[stray.as_raw_fd()])
        .unwrap();
    assert_eq!(answer_type(&refused), resp::ERR_INVALID_PARAMETER);

    // B breaks the framing: an oversized length, then one cut short.
    let mut b = Guest::connect(&b_path).unwrap();
    assert_eq!(
        answer_type(
            &b.call(&build::resource_create_2d(1, Format::B8G8R8A8, 8, 8), &[])
                .unwrap()
        ),
        resp::OK_NODATA
    );
    b.stream()
        .write_all(&(MAX_FRAME_BYTES + 1).to_le_bytes())
        .unwrap();
    assert!(
        b.call(&build::get_display_info(), &[]).is_err(),
        "the connection is closed"
    );
    wait_until("b's session released", || {
        !gpud.ledger.accounts().contains_key("dt-b")
    });
    let b = Guest::connect(&b_path).unwrap();
    b.stream().write_all(&100u32.to_le_bytes()).unwrap();
    b.stream().write_all(&[1, 2, 3]).unwrap();
    drop(b);
    // B comes back and works; A never noticed.
    let mut b = Guest::connect(&b_path).unwrap();
    assert_eq!(
        answer_type(&b.call(&build::get_display_info(), &[]).unwrap()),
        resp::OK_DISPLAY_INFO
    );
    assert_eq!(
        answer_type(&a.call(&build::resource_flush(full, 1), &[]).unwrap()),
        resp::OK_NODATA
    );
    assert_eq!(gpud.ledger.accounts()["dt-a"].charged_bytes, 16 * 16 * 4);

    drop(a);
    drop(b);
    wait_until("every session released", || {
        gpud.ledger.total_charged() == 0 && gpud.ledger.accounts().is_empty()
    });
}
