//! The desktop compositor with real Wayland clients, rendering through a
//! real gpud on lavapipe: `flotilla compositor` on its gpud socket, then
//! weston-simple-shm and foot as clients. What the scanout shows is read
//! back from gpud — the frame a viewer would get.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_gpu::service::GpuService;
use flotilla_tests::flotilla_bin;

const BACKGROUND: [u8; 4] = flotilla_compositor::gpu_output::BACKGROUND_BGRX;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// gpud (lavapipe when there is a Vulkan device) and a compositor on it.
struct Desktop {
    service: GpuService,
    _gpu: flotilla_gpu::service::DesktopGpu,
    compositor: Killed,
    runtime_dir: PathBuf,
    _root: tempfile::TempDir,
}

impl Desktop {
    fn start(width: u32, height: u32) -> Desktop {
        let gpus = flotilla_gpu::enumerate().unwrap_or_default();
        let service = GpuService::open(&gpus, width, height);
        let root = tempfile::tempdir().unwrap();
        let gpu = service
            .attach("dt-c", None, 64 << 20, &root.path().join("gpu"), None)
            .unwrap();
        let runtime_dir = root.path().join("run");
        std::fs::create_dir(&runtime_dir).unwrap();
        std::fs::set_permissions(
            &runtime_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let compositor = Command::new(flotilla_bin())
            .args([
                "compositor",
                "--socket-name",
                "wayland-test",
                "--gpu-socket",
            ])
            .arg(&gpu.socket)
            .env("XDG_RUNTIME_DIR", &runtime_dir)
            .env(
                "WAYLAND_DEBUG",
                std::env::var_os("SERVER_DEBUG").unwrap_or_default(),
            )
            .stdin(Stdio::null())
            .spawn()
            .expect("start the compositor");
        let desktop = Desktop {
            service,
            _gpu: gpu,
            compositor: Killed(compositor),
            runtime_dir,
            _root: root,
        };
        desktop.wait("the Wayland socket", |d| {
            d.runtime_dir.join("wayland-test").exists()
        });
        desktop
    }

    fn client(&self, program: &str, args: &[&str]) -> Killed {
        Killed(
            Command::new(program)
                .args(args)
                .env("XDG_RUNTIME_DIR", &self.runtime_dir)
                .env("WAYLAND_DISPLAY", "wayland-test")
                .env_remove("DISPLAY")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .env(
                    "WAYLAND_DEBUG",
                    std::env::var_os("CLIENT_DEBUG").unwrap_or_default(),
                )
                .spawn()
                .unwrap_or_else(|e| panic!("start {program}: {e}")),
        )
    }

    fn screen(&self) -> Option<(u32, u32, Vec<u8>)> {
        self.service.scanout("dt-c")
    }

    fn wait(&self, what: &str, mut done: impl FnMut(&Desktop) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(self) {
            if Instant::now() > deadline {
                let path = std::env::temp_dir().join("flotilla-compositor-timeout.ppm");
                if let Some(screen) = self.screen() {
                    save(&screen, &path);
                }
                panic!(
                    "timed out waiting for {what} (screen saved to {})",
                    path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn pixel(screen: &(u32, u32, Vec<u8>), x: u32, y: u32) -> [u8; 4] {
    let at = ((y * screen.0 + x) * 4) as usize;
    screen.2[at..at + 4].try_into().unwrap()
}

fn save(screen: &(u32, u32, Vec<u8>), path: &Path) {
    // A PPM is enough to look at a failure.
    let mut out = format!("P6\n{} {}\n255\n", screen.0, screen.1).into_bytes();
    for p in screen.2.chunks_exact(4) {
        out.extend_from_slice(&[p[2], p[1], p[0]]);
    }
    let _ = std::fs::write(path, out);
}

#[test]
fn weston_simple_shm_shows_its_pattern_at_the_top_left() {
    if !have("weston-simple-shm") {
        assert!(
            std::env::var_os("FLOTILLA_REQUIRE_VULKAN").is_none(),
            "weston-simple-shm is missing (apt-get install weston)"
        );
        return;
    }
    let desktop = Desktop::start(640, 480);
    // The background, before any client.
    desktop.wait("the background", |d| {
        d.screen()
            .is_some_and(|s| pixel(&s, 320, 240) == BACKGROUND)
    });
    let _client = desktop.client("weston-simple-shm", &[]);
    // simple-shm draws a 250×250 XRGB8888 buffer: a white 20-pixel border
    // (its buffer starts white), rings inside, and a diagonal cross whose
    // padding byte is 0 — invisible unless a compositor wrongly uses the
    // padding as alpha.
    desktop.wait("simple-shm's window", |d| {
        d.screen()
            .is_some_and(|s| pixel(&s, 5, 5) == [0xff, 0xff, 0xff, 0xff])
    });
    let screen = desktop.screen().unwrap();
    let failure = std::env::temp_dir().join("flotilla-compositor-simple-shm.ppm");
    save(&screen, &failure);
    let check = |ok: bool, what: &str| {
        assert!(ok, "{what} (screen saved to {})", failure.display());
    };
    check(
        pixel(&screen, 249, 249) == [0xff; 4],
        "the border's far corner",
    );
    check(
        pixel(&screen, 250, 250) == BACKGROUND,
        "right of the window",
    );
    check(
        pixel(&screen, 600, 400) == BACKGROUND,
        "the rest of the screen",
    );
    // Inside: the rings, never the background, also on the cross.
    for (x, y) in [(125, 125), (60, 60), (100, 100), (190, 60), (40, 125)] {
        let p = pixel(&screen, x, y);
        check(
            p != BACKGROUND && p[3] == 0xff,
            &format!("({x}, {y}) is drawn: {p:?}"),
        );
    }
    // It animates: frames keep coming, the centre changes.
    let first = pixel(&screen, 125, 125);
    desktop.wait("the next frames", |d| {
        d.screen().is_some_and(|s| pixel(&s, 125, 125) != first)
    });
    let _ = std::fs::remove_file(&failure);
    drop(desktop.compositor);
}

#[test]
fn foot_renders_into_its_maximised_window() {
    if !have("foot") {
        assert!(
            std::env::var_os("FLOTILLA_REQUIRE_VULKAN").is_none(),
            "foot is missing (apt-get install foot)"
        );
        return;
    }
    let desktop = Desktop::start(640, 480);
    desktop.wait("the background", |d| {
        d.screen()
            .is_some_and(|s| pixel(&s, 320, 240) == BACKGROUND)
    });
    let mut foot = desktop.client(
        "foot",
        &[
            "--override=colors.background=102030",
            "sh",
            "-c",
            "sleep 100",
        ],
    );
    // foot fills the maximised window (the whole output) with its
    // background colour.
    desktop.wait("foot's window", |d| {
        d.screen().is_some_and(|s| {
            [(10, 470), (320, 240), (630, 10)]
                .iter()
                .all(|&(x, y)| pixel(&s, x, y)[..3] == [0x30, 0x20, 0x10])
        })
    });
    // And it is still running (a client the compositor upsets can crash:
    // foot 1.13 did when given keyboard focus before its first configure).
    assert!(foot.0.try_wait().unwrap().is_none(), "foot exited");
}
