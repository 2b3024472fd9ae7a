//! gpud as the node agent runs it: a socket per desktop, the report
//! `flotilla gpu info` shows, and nothing left when a desktop detaches —
//! on the host's GPU (lavapipe here) and on the CPU.

use std::os::unix::fs::PermissionsExt;

use flotilla_gpu::guest::{answer_type, Guest};
use flotilla_gpu::protocol::{build, resp, Format};
use flotilla_gpu::service::{GpuService, SOCKET_NAME};

fn service() -> Vec<GpuService> {
    let mut services = vec![GpuService::cpu(640, 480)];
    match flotilla_gpu::enumerate() {
        Ok(gpus) if !gpus.is_empty() => services.push(GpuService::open(&gpus, 640, 480)),
        _ if std::env::var_os("FLOTILLA_REQUIRE_VULKAN").is_some() => {
            panic!("no Vulkan device (install mesa-vulkan-drivers)")
        }
        _ => eprintln!(
            "skipping: the GPU service (no Vulkan device: install mesa-vulkan-drivers); the CPU service only"
        ),
    }
    services
}

#[test]
fn each_desktop_gets_its_own_socket_and_account() {
    for service in service() {
        let on_gpu = service.on_gpu();
        let root = tempfile::tempdir().unwrap();
        let a = service
            .attach("dt-a", None, 1 << 20, &root.path().join("a"), None)
            .unwrap();
        let b = service
            .attach("dt-b", Some(0), 2 << 20, &root.path().join("b"), None)
            .unwrap();
        // Only its owner may reach it.
        let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode();
        assert_eq!(mode(&root.path().join("a")) & 0o777, 0o700);
        assert_eq!(mode(&a.socket) & 0o777, 0o600);
        assert_eq!(a.socket, root.path().join("a").join(SOCKET_NAME));
        // A GPU it does not have is an error, not a panic.
        assert!(service
            .attach("dt-c", Some(7), 1 << 20, &root.path().join("c"), None)
            .is_err());

        let mut guest_a = Guest::connect(&a.socket).unwrap();
        let info = guest_a.call(&build::get_display_info(), &[]).unwrap();
        assert_eq!(answer_type(&info), resp::OK_DISPLAY_INFO);
        assert_eq!(&info[32..40], &[0x80, 2, 0, 0, 0xe0, 1, 0, 0]);
        let create = build::resource_create_2d(1, Format::B8G8R8A8, 256, 256);
        assert_eq!(
            answer_type(&guest_a.call(&create, &[]).unwrap()),
            resp::OK_NODATA
        );
        // Past the budget.
        let huge = build::resource_create_2d(2, Format::B8G8R8A8, 1024, 1024);
        assert_eq!(
            answer_type(&guest_a.call(&huge, &[]).unwrap()),
            resp::ERR_OUT_OF_MEMORY
        );
        let mut guest_b = Guest::connect(&b.socket).unwrap();
        assert_eq!(
            answer_type(&guest_b.call(&create, &[]).unwrap()),
            resp::OK_NODATA
        );

        let (index, account) = service.account("dt-a").unwrap();
        assert_eq!(index, 0);
        assert_eq!(account.budget_bytes, 1 << 20);
        assert!(account.charged_bytes >= 256 * 256 * 4, "{account:?}");
        if !on_gpu {
            assert_eq!(account.charged_bytes, 256 * 256 * 4);
        }
        let report = service.report();
        assert_eq!(report.len(), 1);
        assert_eq!(report[0].capabilities.is_some(), on_gpu);
        let names: Vec<&str> = report[0].desktops.iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(names, ["dt-a", "dt-b"]);

        // Detaching closes the guest's connection, frees its memory and
        // removes its socket; the other desktop carries on.
        let socket = a.socket.clone();
        drop(a);
        assert!(guest_a.call(&build::get_display_info(), &[]).is_err());
        assert!(!socket.exists());
        assert!(service.account("dt-a").is_none());
        let unref = build::resource_unref(1);
        assert_eq!(
            answer_type(&guest_b.call(&unref, &[]).unwrap()),
            resp::OK_NODATA
        );
        assert_eq!(service.account("dt-b").unwrap().1.charged_bytes, 0);

        // A socket left by an earlier agent is replaced.
        std::fs::create_dir_all(root.path().join("a")).unwrap();
        std::fs::write(&socket, b"stale").unwrap();
        let again = service
            .attach("dt-a", None, 1 << 20, &root.path().join("a"), None)
            .unwrap();
        let mut guest = Guest::connect(&again.socket).unwrap();
        assert_eq!(
            answer_type(&guest.call(&build::get_display_info(), &[]).unwrap()),
            resp::OK_DISPLAY_INFO
        );
        drop(again);
        drop(b);
        // Everything detached: nothing charged anywhere.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while service.gpus()[0].gpud.ledger.total_charged() != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the ledger never emptied"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(service.report()[0].desktops.is_empty());
    }
}

/// The desktop can write its socket's directory: a symlink it planted at
/// the socket's name is replaced, never followed (root would otherwise
/// chmod and chown the host file it points at).
#[test]
fn a_planted_symlink_is_replaced_not_followed() {
    use std::os::unix::fs::MetadataExt;
    let service = GpuService::cpu(64, 64);
    let root = tempfile::tempdir().unwrap();
    let host_file = root.path().join("host-secret");
    std::fs::write(&host_file, "secret").unwrap();
    std::fs::set_permissions(&host_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let before = std::fs::metadata(&host_file).unwrap();
    let dir = root.path().join("gpu");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::symlink(&host_file, dir.join(SOCKET_NAME)).unwrap();
    // As root (CI) the socket is given to a desktop uid, as the agent does.
    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc::geteuid() } == 0;
    let owner = is_root.then_some((100_000, 100_000));
    let attached = service.attach("dt-s", None, 1 << 20, &dir, owner).unwrap();
    let after = std::fs::metadata(&host_file).unwrap();
    assert_eq!(
        (after.mode(), after.uid(), after.gid()),
        (before.mode(), before.uid(), before.gid()),
        "the host file was changed through the symlink"
    );
    assert_eq!(std::fs::read_to_string(&host_file).unwrap(), "secret");
    let socket = std::fs::symlink_metadata(&attached.socket).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_socket(
        &socket.file_type()
    ));
    if let Some((uid, _)) = owner {
        assert_eq!(socket.uid(), uid);
    }
    assert!(Guest::connect(&attached.socket).is_ok());
    // Nothing is left beside the directory.
    let names: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    drop(attached);
    // A directory planted at the name: an error for this desktop only.
    let other = root.path().join("other");
    std::fs::create_dir_all(other.join(SOCKET_NAME).join("x")).unwrap();
    assert!(service.attach("dt-t", None, 1 << 20, &other, None).is_err());
}
