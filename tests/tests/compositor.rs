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

/// Whether the client `program` (Debian package `package`) is installed;
/// in CI (FLOTILLA_REQUIRE_VULKAN set) it must be: the test fails rather
/// than skip.
fn client_available(program: &str, package: &str) -> bool {
    let found = have(program);
    assert!(
        found || std::env::var_os("FLOTILLA_REQUIRE_VULKAN").is_none(),
        "{program} is missing (apt-get install {package})"
    );
    if !found {
        eprintln!("skipping: {program} is missing (apt-get install {package})");
    }
    found
}

fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// gpud (lavapipe when there is a Vulkan device) and a compositor on it.
/// Fields drop in order: the compositor, then its gpud socket (whose
/// thread is joined), then gpud itself — no thread still holds the
/// Vulkan device when the process exits.
struct Desktop {
    compositor: Killed,
    _gpu: flotilla_gpu::service::DesktopGpu,
    service: GpuService,
    runtime_dir: PathBuf,
    _root: tempfile::TempDir,
}

impl Desktop {
    fn start(width: u32, height: u32) -> Desktop {
        Desktop::start_with(width, height, &[])
    }

    /// A desktop whose compositor gets `extra` arguments.
    fn start_with(width: u32, height: u32, extra: &[&str]) -> Desktop {
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
        let mut command = Command::new(flotilla_bin());
        command
            .args([
                "compositor",
                "--socket-name",
                "wayland-test",
                "--gpu-socket",
            ])
            .arg(&gpu.socket)
            .arg("--control")
            .arg(runtime_dir.join("control.sock"))
            .args(extra)
            .env("XDG_RUNTIME_DIR", &runtime_dir)
            .stdin(Stdio::null());
        // SERVER_DEBUG=1 traces the compositor's side of the protocol.
        if let Some(debug) = std::env::var_os("SERVER_DEBUG") {
            command.env("WAYLAND_DEBUG", debug);
        }
        let compositor = command.spawn().expect("start the compositor");
        let desktop = Desktop {
            service,
            _gpu: gpu,
            compositor: Killed(compositor),
            runtime_dir,
            _root: root,
        };
        // The Wayland socket is bound first, the control socket once the
        // compositor is set up: listening once a connection is taken (its
        // file appears a moment before, at bind).
        desktop.wait("the Wayland and control sockets", |d| {
            d.runtime_dir.join("wayland-test").exists()
                && std::os::unix::net::UnixStream::connect(d.runtime_dir.join("control.sock"))
                    .is_ok()
        });
        desktop
    }

    fn client(&self, program: &str, args: &[&str]) -> Killed {
        let mut command = Command::new(program);
        command
            .args(args)
            .env("XDG_RUNTIME_DIR", &self.runtime_dir)
            .env("WAYLAND_DISPLAY", "wayland-test")
            .env_remove("DISPLAY")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // CLIENT_DEBUG=1 traces the client's protocol.
        if let Some(debug) = std::env::var_os("CLIENT_DEBUG") {
            command.env("WAYLAND_DEBUG", debug);
        }
        Killed(
            command
                .spawn()
                .unwrap_or_else(|e| panic!("start {program}: {e}")),
        )
    }

    fn control(&self) -> Control {
        let stream = std::os::unix::net::UnixStream::connect(self.runtime_dir.join("control.sock"))
            .expect("connect to the control socket");
        Control {
            reader: std::io::BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    fn screen(&self) -> Option<(u32, u32, Vec<u8>)> {
        self.service.scanout("dt-c")
    }

    /// Waits until `done`, checked again at each of gpud's frames (most
    /// conditions are about the screen) and at least every 20 ms (for
    /// those about files, sockets or the control socket), for 30 s.
    fn wait(&self, what: &str, mut done: impl FnMut(&Desktop) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut frame = None;
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
            frame = self
                .service
                .wait_for_frame("dt-c", frame, Duration::from_millis(20))
                .or(frame);
        }
    }
}

/// A connection to the compositor's control socket.
struct Control {
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
    writer: std::os::unix::net::UnixStream,
}

impl Control {
    fn send(&mut self, line: &str) -> serde_json::Value {
        use std::io::{BufRead, Write};
        writeln!(self.writer, "{line}").unwrap();
        let mut answer = String::new();
        self.reader.read_line(&mut answer).unwrap();
        serde_json::from_str(&answer).unwrap_or_else(|_| panic!("not JSON: {answer:?}"))
    }

    fn ok(&mut self, request: serde_json::Value) {
        let answer = self.send(&request.to_string());
        assert_eq!(answer["ok"], true, "{request} → {answer}");
    }

    /// Goes away (its end of the connection shut) and waits for the
    /// compositor to close it, which it does once it has released what
    /// this connection held.
    fn hang_up_and_wait_for_release(mut self) {
        use std::io::Read;
        self.writer
            .shutdown(std::net::Shutdown::Write)
            .expect("shut the control connection");
        self.reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut rest = Vec::new();
        self.reader
            .read_to_end(&mut rest)
            .expect("the compositor closes the connection after releasing its keys");
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
    if !client_available("weston-simple-shm", "weston") {
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
    // Inside: the rings, never the background, also on the cross (the
    // screen's fourth byte is the buffer's padding, copied: only B, G and
    // R are shown).
    for (x, y) in [(125, 125), (60, 60), (100, 100), (190, 60), (40, 125)] {
        let p = pixel(&screen, x, y);
        check(
            p[..3] != BACKGROUND[..3],
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
    if !client_available("foot", "foot") {
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
            r"printf '\033]2;%s\007' 'renamed: ok'; sleep 100",
        ],
    );
    // foot asks for server-side decorations: it fills the maximised
    // window (the output under the title bar) with its background colour.
    let bar = flotilla_compositor::decoration::TITLE_HEIGHT;
    desktop.wait("foot's window", |d| {
        d.screen().is_some_and(|s| {
            [(10, 470), (320, 240), (630, bar + 2)]
                .iter()
                .all(|&(x, y)| pixel(&s, x, y)[..3] == [0x30, 0x20, 0x10])
        })
    });
    // The bar shows the title foot's shell set, focused: exactly the bar
    // the compositor draws for it.
    let mut control = desktop.control();
    desktop.wait("the new title", |_| {
        control.send(r#"{"op":"windows"}"#)["windows"][0]["title"] == "renamed: ok"
    });
    let expected = flotilla_compositor::decoration::title_bar(640, "renamed: ok", true);
    desktop.wait("the title bar", |d| {
        d.screen().is_some_and(|s| {
            (0..640 * bar as usize).all(|i| s.2[i * 4..i * 4 + 3] == expected[i * 4..i * 4 + 3])
        })
    });
    // And it is still running (a client the compositor upsets can crash:
    // foot 1.13 did when given keyboard focus before its first configure).
    assert!(foot.0.try_wait().unwrap().is_none(), "foot exited");
}

#[test]
fn text_typed_through_the_control_socket_reaches_a_shell_in_foot() {
    if !client_available("foot", "foot") {
        return;
    }
    let desktop = Desktop::start(640, 480);
    let out = tempfile::tempdir().unwrap();
    let _foot = desktop.client("foot", &["--override=colors.background=102030", "sh"]);
    desktop.wait("foot's window", |d| {
        d.screen()
            .is_some_and(|s| pixel(&s, 320, 240)[..3] == [0x30, 0x20, 0x10])
    });
    let mut control = desktop.control();
    // foot is the one window, and it has the keyboard.
    desktop.wait("foot to have the keyboard", |_| {
        let windows = control.send(r#"{"op":"windows"}"#);
        windows["windows"][0]["focused"] == true && windows["windows"][0]["app_id"] == "foot"
    });
    let windows = control.send(r#"{"op":"windows"}"#);
    assert_eq!(
        windows["windows"].as_array().map(Vec::len),
        Some(1),
        "{windows}"
    );
    assert_eq!(windows["windows"][0]["width"], 640, "{windows}");
    let before = desktop.screen().unwrap();
    // Shift-heavy text, typed through the keymap; Enter runs it.
    let typed = out.path().join("typed");
    control.ok(serde_json::json!({
        "op": "text",
        "text": format!("printf 'OK:%s' \"$((6*7))\" > {}\n", typed.display()),
    }));
    desktop.wait("the shell to run the typed command", |_| {
        std::fs::read_to_string(&typed).is_ok_and(|text| text == "OK:42")
    });
    // The typing showed in the frames.
    desktop.wait("the frame to change", |d| {
        d.screen().is_some_and(|s| s.2 != before.2)
    });

    // Bad requests get errors, and the connection carries on.
    for bad in [
        "not json",
        r#"{"op":"key","code":9999}"#,
        r#"{"op":"key","name":"NoSuchKey"}"#,
        r#"{"op":"button","button":1}"#,
        r#"{"op":"motion","x":10000,"y":1}"#,
        r#"{"op":"focus","id":99}"#,
        r#"{"op":"windows","extra":1}"#,
        r#"{"op":"text","text":"caf\u00e9"}"#,
    ] {
        let answer = control.send(bad);
        assert_eq!(answer["ok"], false, "{bad} → {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{answer}"
        );
    }
    // A controller that holds Shift and goes away releases it: the next
    // text is typed unshifted.
    let mut holder = desktop.control();
    holder.ok(serde_json::json!({"op": "key", "code": 42, "state": "press"}));
    holder.hang_up_and_wait_for_release();
    let lower = out.path().join("lower");
    control.ok(serde_json::json!({
        "op": "text",
        "text": format!("echo abc > {}\n", lower.display()),
    }));
    desktop.wait("unshifted text", |_| {
        std::fs::read_to_string(&lower).is_ok_and(|text| text == "abc\n")
    });
    // Named keys and a modifier combination: Ctrl+U clears what was typed
    // on the line so far, so only what follows runs.
    let combo = out.path().join("combo");
    control.ok(serde_json::json!({"op": "text", "text": "echo wrong"}));
    control.ok(serde_json::json!({"op": "key", "name": "Control_L", "state": "press"}));
    control.ok(serde_json::json!({"op": "key", "name": "u"}));
    control.ok(serde_json::json!({"op": "key", "name": "Control_L", "state": "release"}));
    control.ok(serde_json::json!({
        "op": "text",
        "text": format!("echo right > {}", combo.display()),
    }));
    control.ok(serde_json::json!({"op": "key", "name": "Return"}));
    desktop.wait("the line after Ctrl+U", |_| {
        std::fs::read_to_string(&combo).is_ok_and(|text| text == "right\n")
    });
    // Key repeat is the client's (wl_keyboard.repeat_info: 400 ms, 30/s):
    // a key held for a second types it many times, and its release stops
    // it.
    let repeated = out.path().join("repeated");
    control.ok(serde_json::json!({"op": "text", "text": "echo "}));
    control.ok(serde_json::json!({"op": "key", "name": "x", "state": "press"}));
    // The workload, not a wait: the key is held down for a second.
    std::thread::sleep(Duration::from_millis(1000));
    control.ok(serde_json::json!({"op": "key", "name": "x", "state": "release"}));
    control.ok(serde_json::json!({
        "op": "text",
        "text": format!(" > {}\n", repeated.display()),
    }));
    desktop.wait("the repeated key's line", |_| {
        std::fs::read_to_string(&repeated).is_ok_and(|text| text.ends_with('\n'))
    });
    let text = std::fs::read_to_string(&repeated).unwrap();
    let xs = text.trim_end();
    assert!(
        xs.len() >= 2 && xs.chars().all(|c| c == 'x'),
        "held x typed {text:?}"
    );
    // Pointer: motion, a click (focus follows it), a scroll.
    control.ok(serde_json::json!({"op": "motion", "x": 100.0, "y": 100.0}));
    control.ok(serde_json::json!({"op": "button", "button": 272}));
    control.ok(serde_json::json!({"op": "scroll", "dy": 15.0}));
    control.ok(serde_json::json!({"op": "release_all"}));
}

/// A Wayland client written by hand, to misbehave in ways real toolkits
/// never would.
struct RawClient {
    stream: std::os::unix::net::UnixStream,
    received: Vec<u8>,
}

impl RawClient {
    fn connect(desktop: &Desktop) -> RawClient {
        let stream =
            std::os::unix::net::UnixStream::connect(desktop.runtime_dir.join("wayland-test"))
                .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        RawClient {
            stream,
            received: Vec::new(),
        }
    }

    fn send(&mut self, object: u32, opcode: u16, args: &[u8], fds: &[i32]) {
        let mut message = object.to_le_bytes().to_vec();
        message.extend_from_slice(
            &((((8 + args.len()) as u32) << 16) | u32::from(opcode)).to_le_bytes(),
        );
        message.extend_from_slice(args);
        flotilla_gpu::wire::send_message(
            std::os::fd::AsRawFd::as_raw_fd(&self.stream),
            &message,
            fds,
        )
        .unwrap();
    }

    fn string(text: &str) -> Vec<u8> {
        let mut out = ((text.len() + 1) as u32).to_le_bytes().to_vec();
        out.extend_from_slice(text.as_bytes());
        out.push(0);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out
    }

    /// Reads until the connection ends; returns the events as (object,
    /// opcode, args).
    fn events_until_closed(&mut self) -> Vec<(u32, u16, Vec<u8>)> {
        use std::io::Read;
        let mut buffer = [0u8; 4096];
        loop {
            match self.stream.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => self.received.extend_from_slice(&buffer[..n]),
            }
        }
        parse_events(&self.received)
    }

    /// Reads until the event (object, opcode) arrives.
    fn events_until(&mut self, object: u32, opcode: u16) -> Vec<(u32, u16, Vec<u8>)> {
        use std::io::Read;
        let mut buffer = [0u8; 4096];
        loop {
            let events = parse_events(&self.received);
            if events.iter().any(|e| e.0 == object && e.1 == opcode) {
                return events;
            }
            let n = self.stream.read(&mut buffer).expect("read events");
            assert!(n > 0, "the compositor closed the connection");
            self.received.extend_from_slice(&buffer[..n]);
        }
    }
}

fn parse_events(bytes: &[u8]) -> Vec<(u32, u16, Vec<u8>)> {
    let mut events = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let object = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let word = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
        let size = (word >> 16) as usize;
        if size < 8 || at + size > bytes.len() {
            break;
        }
        events.push((
            object,
            (word & 0xffff) as u16,
            bytes[at + 8..at + size].to_vec(),
        ));
        at += size;
    }
    events
}

#[test]
fn misbehaving_clients_are_disconnected_and_the_rest_carry_on() {
    if !client_available("weston-simple-shm", "weston") {
        return;
    }
    let mut desktop = Desktop::start(640, 480);
    let _good = desktop.client("weston-simple-shm", &[]);
    desktop.wait("simple-shm's window", |d| {
        d.screen()
            .is_some_and(|s| pixel(&s, 5, 5) == [0xff, 0xff, 0xff, 0xff])
    });

    // Garbage bytes; a request to an object that does not exist; a buffer
    // larger than its pool. Each gets a protocol error and is cut off.
    let mut garbage = RawClient::connect(&desktop);
    std::io::Write::write_all(&mut garbage.stream, &[0xff; 64]).unwrap();
    garbage.events_until_closed();

    // (wayland-server cuts these two off without an error event.)
    let mut unknown = RawClient::connect(&desktop);
    unknown.send(77, 0, &[], &[]);
    unknown.events_until_closed();

    let mut liar = RawClient::connect(&desktop);
    liar.send(1, 1, &2u32.to_le_bytes(), &[]); // get_registry → 2
    liar.send(1, 0, &3u32.to_le_bytes(), &[]); // sync → 3
    let events = liar.events_until(3, 0);
    let shm = events
        .iter()
        .filter(|e| e.0 == 2 && e.1 == 0)
        .find(|e| e.2.len() > 8 && e.2[8..].starts_with(b"wl_shm\0"))
        .map(|e| u32::from_le_bytes(e.2[0..4].try_into().unwrap()))
        .expect("a wl_shm global");
    let mut bind = shm.to_le_bytes().to_vec();
    bind.extend_from_slice(&RawClient::string("wl_shm"));
    bind.extend_from_slice(&1u32.to_le_bytes());
    bind.extend_from_slice(&4u32.to_le_bytes());
    liar.send(2, 0, &bind, &[]); // bind wl_shm → 4
                                 // SAFETY: a fresh memfd, owned below.
    let pool = unsafe {
        let fd = libc::memfd_create(c"pool".as_ptr(), libc::MFD_CLOEXEC);
        assert!(fd >= 0);
        assert_eq!(libc::ftruncate(fd, 16), 0);
        <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
    };
    let mut create_pool = 5u32.to_le_bytes().to_vec();
    create_pool.extend_from_slice(&16u32.to_le_bytes());
    liar.send(
        4,
        0,
        &create_pool,
        &[std::os::fd::AsRawFd::as_raw_fd(&pool)],
    ); // a 16-byte pool → 5
    let mut create_buffer = Vec::new();
    for value in [6u32, 0, 100, 100, 400, 0] {
        create_buffer.extend_from_slice(&value.to_le_bytes());
    }
    liar.send(5, 0, &create_buffer, &[]); // 100×100 in 16 bytes
    let events = liar.events_until_closed();
    assert!(
        events.iter().any(|e| e.0 == 1 && e.1 == 0),
        "no wl_display.error: {events:?}"
    );

    // The compositor and the good client carry on.
    assert!(
        desktop.compositor.0.try_wait().unwrap().is_none(),
        "the compositor died"
    );
    let before = pixel(&desktop.screen().unwrap(), 125, 125);
    desktop.wait("simple-shm to keep drawing", |d| {
        d.screen().is_some_and(|s| pixel(&s, 125, 125) != before)
    });
}

/// The geometry (x, y, width, height) of each window the control socket
/// lists, and its popups'.
fn geometry(value: &serde_json::Value) -> (i64, i64, i64, i64) {
    (
        value["x"].as_i64().unwrap(),
        value["y"].as_i64().unwrap(),
        value["width"].as_i64().unwrap(),
        value["height"].as_i64().unwrap(),
    )
}

#[test]
fn two_windows_tile_side_by_side_and_follow_an_output_resize() {
    if !client_available("foot", "foot") {
        return;
    }
    let desktop = Desktop::start_with(640, 480, &["--layout", "tiled"]);
    let mut control = desktop.control();
    let foot = |colour: &str| {
        desktop.client(
            "foot",
            &[
                &format!("--override=colors.background={colour}"),
                "sh",
                "-c",
                "sleep 100",
            ],
        )
    };
    let _left = foot("102030");
    desktop.wait("the first foot", |d| {
        d.screen()
            .is_some_and(|s| pixel(&s, 600, 400)[..3] == [0x30, 0x20, 0x10])
    });
    let _right = foot("405060");
    // The first keeps the left half, the second takes the right.
    desktop.wait("two windows side by side", |d| {
        d.screen().is_some_and(|s| {
            pixel(&s, 100, 400)[..3] == [0x30, 0x20, 0x10]
                && pixel(&s, 600, 400)[..3] == [0x60, 0x50, 0x40]
        })
    });
    // foot's windows are decorated: their title bars take the top. The
    // first foot takes its new size when it next draws.
    let bar = i64::from(flotilla_compositor::decoration::TITLE_HEIGHT);
    let placed = |control: &mut Control| {
        let windows = control.send(r#"{"op":"windows"}"#);
        let mut placed: Vec<_> = windows["windows"]
            .as_array()
            .unwrap()
            .iter()
            .map(geometry)
            .collect();
        placed.sort();
        placed
    };
    desktop.wait("two tiles under their title bars", |_| {
        placed(&mut control) == vec![(0, bar, 320, 480 - bar), (320, bar, 320, 480 - bar)]
    });

    // A bigger output: gpud's frame and both windows follow.
    control.ok(serde_json::json!({"op": "output", "width": 1024, "height": 768}));
    desktop.wait("the resized output", |d| {
        d.screen().is_some_and(|s| {
            s.0 == 1024
                && s.1 == 768
                && pixel(&s, 100, 700)[..3] == [0x30, 0x20, 0x10]
                && pixel(&s, 1000, 700)[..3] == [0x60, 0x50, 0x40]
        })
    });
    let windows = control.send(r#"{"op":"windows"}"#);
    assert_eq!(
        windows["output"],
        serde_json::json!({"width": 1024, "height": 768})
    );
    desktop.wait("both tiles resized", |_| {
        placed(&mut control) == vec![(0, bar, 512, 768 - bar), (512, bar, 512, 768 - bar)]
    });

    // Sizes gpud cannot show or the I420 frame cannot hold are refused;
    // the output keeps its size.
    for (width, height) in [(0, 480), (641, 480), (8000, 480), (640, 63)] {
        let answer = control.send(
            &serde_json::json!({"op": "output", "width": width, "height": height}).to_string(),
        );
        assert_eq!(answer["ok"], false, "{width}×{height}: {answer}");
    }
    // One bigger than the desktop's GPU memory budget (64 MiB): refused by
    // gpud, and the output goes back to its size.
    let answer = control.send(r#"{"op":"output","width":7680,"height":4320}"#);
    assert_eq!(answer["ok"], false, "{answer}");
    let windows = control.send(r#"{"op":"windows"}"#);
    assert_eq!(
        windows["output"],
        serde_json::json!({"width": 1024, "height": 768})
    );
    desktop.wait("the output back at 1024×768", |d| {
        d.screen().is_some_and(|s| {
            s.0 == 1024 && s.1 == 768 && pixel(&s, 1000, 700)[..3] == [0x60, 0x50, 0x40]
        })
    });
    drop(desktop.compositor);
}

#[test]
fn chromium_renders_a_page_and_its_menu_stays_inside_the_output() {
    if !client_available("chromium", "chromium") {
        return;
    }
    let desktop = Desktop::start(800, 600);
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page.html");
    // A known colour everywhere, a known block at the top left, and a
    // drop-down at the bottom right whose 40-option list cannot open
    // downwards inside the output.
    let options: String = (0..40)
        .map(|i| format!("<option>option {i}</option>"))
        .collect();
    std::fs::write(
        &page,
        format!(
            "<html><body style='margin:0;background:#12ab34'>\
             <div style='width:200px;height:200px;background:#c81e5a'></div>\
             <select id=s style='position:fixed;right:20px;bottom:20px;width:160px;height:30px'>\
             {options}</select></body></html>"
        ),
    )
    .unwrap();
    let mut command = Command::new("chromium");
    command
        .args([
            "--ozone-platform=wayland",
            // Root cannot use chromium's own sandbox; --test-type hides the
            // bar warning about it.
            "--no-sandbox",
            "--test-type",
            "--no-first-run",
            "--disable-gpu",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg(format!("--app=file://{}", page.display()))
        .env("XDG_RUNTIME_DIR", &desktop.runtime_dir)
        .env("WAYLAND_DISPLAY", "wayland-test")
        .env_remove("DISPLAY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _chromium = Killed(command.spawn().expect("start chromium"));
    // The page's colours where the page puts them: the window fills the
    // output under its title bar.
    desktop.wait("chromium's page", |d| {
        d.screen().is_some_and(|s| {
            pixel(&s, 100, 100)[..3] == [0x5a, 0x1e, 0xc8]
                && pixel(&s, 400, 300)[..3] == [0x34, 0xab, 0x12]
        })
    });
    let screen = desktop.screen().unwrap();
    assert_eq!(pixel(&screen, 250, 100)[..3], [0x34, 0xab, 0x12]);
    assert_eq!(pixel(&screen, 100, 250)[..3], [0x34, 0xab, 0x12]);
    let mut control = desktop.control();
    let windows = control.send(r#"{"op":"windows"}"#);
    // Chromium asks for server-side decorations too: under its title bar.
    let bar = flotilla_compositor::decoration::TITLE_HEIGHT;
    assert_eq!(
        geometry(&windows["windows"][0]),
        (0, i64::from(bar), 800, 600 - i64::from(bar)),
        "{windows}"
    );
    let title = windows["windows"][0]["title"].as_str().unwrap().to_owned();
    let expected = flotilla_compositor::decoration::title_bar(800, &title, true);
    desktop.wait("chromium's title bar", |d| {
        d.screen().is_some_and(|s| {
            (0..800 * bar as usize).all(|i| s.2[i * 4..i * 4 + 3] == expected[i * 4..i * 4 + 3])
        })
    });

    // Open the drop-down: its list is an xdg_popup, which the compositor
    // keeps inside the output (flipped or slid up).
    control.ok(serde_json::json!({"op": "motion", "x": 700, "y": 565}));
    control.ok(serde_json::json!({"op": "button", "button": 272}));
    let mut popup = None;
    desktop.wait("the menu to open", |_| {
        let windows = control.send(r#"{"op":"windows"}"#);
        popup = windows["windows"][0]["popups"]
            .get(0)
            .map(geometry)
            .filter(|popup| popup.2 > 1 && popup.3 > 1);
        popup.is_some()
    });
    let popup = popup.expect("waited for");
    let (x, y, width, height) = popup;
    assert!(
        x >= 0 && y >= 0 && x + width <= 800 && y + height <= 600,
        "the menu at {popup:?} leaves the 800×600 output"
    );
    assert!(height > 60, "the menu shows options: {popup:?}");
    // And it is drawn: the screen changes inside the menu's rectangle.
    desktop.wait("the menu drawn", |d| {
        d.screen().is_some_and(|s| {
            let p = pixel(&s, (x + width / 2) as u32, (y + height / 2) as u32);
            p[..3] != [0x34, 0xab, 0x12]
        })
    });
    drop(desktop.compositor);
}

/// The keyboard's layout comes from `--keyboard-layout`: on `fr`, the
/// key that is Q on `us` types `a`, and text the `us` keymap cannot type
/// (`é`) is typed; an unknown layout stops the compositor with a reason.
#[test]
fn the_keyboard_layout_is_configurable() {
    if !client_available("foot", "foot") {
        return;
    }
    let desktop = Desktop::start_with(640, 480, &["--keyboard-layout", "fr"]);
    let out = tempfile::tempdir().unwrap();
    let _foot = desktop.client("foot", &["--override=colors.background=102030", "sh"]);
    let mut control = desktop.control();
    desktop.wait("foot to have the keyboard", |_| {
        let windows = control.send(r#"{"op":"windows"}"#);
        windows["windows"][0]["focused"] == true
    });
    let accented = out.path().join("accented");
    control.ok(serde_json::json!({
        "op": "text",
        "text": format!("echo café > {}\n", accented.display()),
    }));
    desktop.wait("the accented word", |_| {
        std::fs::read_to_string(&accented).is_ok_and(|text| text == "café\n")
    });
    // KEY_Q (16) is `a` on an AZERTY keyboard.
    let by_code = out.path().join("by-code");
    control.ok(serde_json::json!({"op": "text", "text": "echo "}));
    control.ok(serde_json::json!({"op": "key", "code": 16}));
    control.ok(serde_json::json!({
        "op": "text",
        "text": format!(" > {}\n", by_code.display()),
    }));
    desktop.wait("the key typed by its code", |_| {
        std::fs::read_to_string(&by_code).is_ok_and(|text| text == "a\n")
    });
    drop(desktop);

    // An unknown layout: a clear error, not a desktop with a wrong keyboard.
    let gpus = flotilla_gpu::enumerate().unwrap_or_default();
    let service = GpuService::open(&gpus, 640, 480);
    let root = tempfile::tempdir().unwrap();
    let gpu = service
        .attach("dt-k", None, 64 << 20, &root.path().join("gpu"), None)
        .unwrap();
    let output = Command::new(flotilla_bin())
        .args([
            "compositor",
            "--keyboard-layout",
            "nosuchlayout",
            "--gpu-socket",
        ])
        .arg(&gpu.socket)
        .env("XDG_RUNTIME_DIR", root.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nosuchlayout"), "{stderr}");
    // A name that is not an xkb name at all is refused before anything starts.
    let output = Command::new(flotilla_bin())
        .args(["compositor", "--keyboard-layout", "us;rm", "--gpu-socket"])
        .arg(&gpu.socket)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

/// wp_viewporter: weston-simple-damage with `--use-viewport` draws a
/// 300×200 buffer, shows its (100, 40) 150×100 part, scaled 2× to 300×200
/// (its white border drawn where the scaled crop puts it). Without
/// scaling its right and bottom borders would be missing.
#[test]
fn a_viewport_crops_and_scales_a_surface() {
    if !client_available("weston-simple-damage", "weston") {
        return;
    }
    let desktop = Desktop::start(640, 480);
    let _client = desktop.client(
        "weston-simple-damage",
        &["--use-viewport", "--width=300", "--height=200"],
    );
    let white = [0xff, 0xff, 0xff];
    desktop.wait("the scaled window's four borders", |d| {
        d.screen().is_some_and(|s| {
            [(2, 100), (297, 100), (150, 2), (150, 197)]
                .iter()
                .all(|&(x, y)| pixel(&s, x, y)[..3] == white)
        })
    });
    let screen = desktop.screen().unwrap();
    // Inside the border: not white; past the window: the background.
    assert_ne!(pixel(&screen, 150, 100)[..3], white);
    assert_eq!(pixel(&screen, 310, 100), BACKGROUND);
    assert_eq!(pixel(&screen, 150, 210), BACKGROUND);
    let windows = desktop.control().send(r#"{"op":"windows"}"#);
    assert_eq!(
        geometry(&windows["windows"][0]),
        (0, 0, 300, 200),
        "{windows}"
    );
}

/// Frames are paced by whether anyone watches (the node agent says so
/// while a stream is open): weston-simple-shm redraws on every frame
/// callback, so it animates as fast as the compositor composes — once it
/// has for a second, at most 10 frames a second unwatched; the output's
/// refresh watched.
#[test]
fn an_unwatched_desktop_is_composed_at_most_ten_times_a_second() {
    if !client_available("weston-simple-shm", "weston") {
        return;
    }
    let desktop = Desktop::start(640, 480);
    let _client = desktop.client("weston-simple-shm", &[]);
    desktop.wait("weston-simple-shm's pattern", |d| {
        d.screen()
            .is_some_and(|s| pixel(&s, 5, 5) == [0xff, 0xff, 0xff, 0xff])
    });
    let frames_in = |seconds: u64| {
        let sequence = || desktop.service.frame("dt-c").expect("a frame").sequence;
        let before = sequence();
        std::thread::sleep(Duration::from_secs(seconds));
        sequence() - before
    };
    // Unwatched (the start), once the animation has run for
    // ANIMATION_AFTER and the compositor says it paces it (the period
    // its `watched` answer gives): an upper bound only — a loaded
    // machine makes fewer frames, never more.
    let mut control = desktop.control();
    desktop.wait("the unwatched animation to be paced", |_| {
        let answer = control.send(r#"{"op":"watched","watched":false}"#);
        answer["frame_period_us"] == 100_000
    });
    let unwatched = frames_in(2);
    assert!(
        (1..=2 * 10 + 2).contains(&unwatched),
        "{unwatched} frames in 2 s unwatched"
    );
    let answer = control.send(r#"{"op":"watched","watched":true}"#);
    assert_eq!(answer["frame_period_us"], 16_666, "{answer}");
    let watched = frames_in(2);
    eprintln!("frames in 2 s: {unwatched} unwatched, {watched} watched");
    assert!(watched >= 1);
    let answer = control.send(r#"{"op":"watched","watched":false}"#);
    assert_eq!(answer["frame_period_us"], 100_000, "{answer}");
    for bad in [r#"{"op":"watched"}"#, r#"{"op":"watched","watched":"yes"}"#] {
        assert_eq!(control.send(bad)["ok"], false, "{bad}");
    }
}
