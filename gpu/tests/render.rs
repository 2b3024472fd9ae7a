//! The Vulkan composition path against the CPU reference, on lavapipe
//! here: two sessions get the same commands — one on the GPU, one on the
//! CPU — and after every frame the composed scanout and its I420 planes
//! must be the same bytes. Known cases first (solid colours, alpha,
//! overlapping draws, clips, partial and overlapping damage, a scanout
//! that is not at the origin, a frame width the GPU's converter cannot
//! take), then a few hundred random composition lists.

mod common;
use common::{memfd, renderer};
use std::sync::Arc;

use flotilla_gpu::compose::{i420_cpu, CompositionList, Draw};
use flotilla_gpu::protocol::{build, resp, Format, MemEntry, Rect};
use flotilla_gpu::render::Renderer;
use flotilla_gpu::session::{Ledger, Session, CAPSET_COMPOSE};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng};

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

/// A seeded generator (the same lists every run) with the one draw the
/// lists need.
struct Rng(StdRng);

impl Rng {
    fn seeded(seed: u64) -> Rng {
        Rng(StdRng::seed_from_u64(seed))
    }

    /// A number in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: u32) -> u32 {
        self.0.random_range(0..n.max(1))
    }
}

/// The same guest twice: on the GPU and on the CPU.
struct Pair {
    gpu: Session,
    cpu: Session,
}

impl Pair {
    fn new(renderer: Arc<Renderer>, ledger: &Arc<Ledger>) -> Pair {
        Pair {
            gpu: Session::with_renderer(
                "dt-gpu",
                1 << 30,
                ledger.clone(),
                1280,
                800,
                Some(renderer),
            ),
            cpu: Session::new("dt-cpu", 1 << 30, ledger.clone(), 1280, 800),
        }
    }

    /// Sends a command (with a fresh memfd of `backing` if given) to both;
    /// they must answer alike. Returns the answer type.
    fn send(&mut self, command: &[u8], backing: Option<&[u8]>) -> u32 {
        let fds = |b: Option<&[u8]>| b.map(memfd).into_iter().collect::<Vec<_>>();
        let gpu = self.gpu.handle(command, fds(backing));
        let cpu = self.cpu.handle(command, fds(backing));
        assert_eq!(gpu, cpu, "the GPU and CPU sessions answered differently");
        answer(&gpu)
    }

    /// Creates resource `id` holding `pixels` (BGRA) and transfers it all.
    fn upload(&mut self, id: u32, width: u32, height: u32, pixels: &[u8]) {
        self.upload_as(id, Format::B8G8R8A8, width, height, pixels);
    }

    fn upload_as(&mut self, id: u32, format: Format, width: u32, height: u32, pixels: &[u8]) {
        let create = build::resource_create_2d(id, format, width, height);
        assert_eq!(self.send(&create, None), resp::OK_NODATA);
        let entry = MemEntry {
            offset: 0,
            length: pixels.len() as u32,
        };
        let attach = build::attach_backing(id, &[entry]);
        assert_eq!(self.send(&attach, Some(pixels)), resp::OK_NODATA);
        let transfer = build::transfer_to_host_2d(rect(0, 0, width, height), 0, id);
        assert_eq!(self.send(&transfer, None), resp::OK_NODATA);
    }

    /// Composes `list`, flushes `flush` of the target, and checks both
    /// sessions hold the same pixels and the same frame.
    fn frame(&mut self, list: &CompositionList, flush: Rect, what: &str) {
        let submit = build::submit_3d(1, Some(7), &list.encode());
        assert_eq!(self.send(&submit, None), resp::OK_NODATA, "{what}");
        let flush = build::resource_flush(flush, list.target);
        assert_eq!(self.send(&flush, None), resp::OK_NODATA, "{what}");
        self.check(list.target, what);
    }

    fn check(&mut self, target: u32, what: &str) {
        let (gpu, cpu) = (
            self.gpu.pixels(target).unwrap(),
            self.cpu.pixels(target).unwrap(),
        );
        if let Some(at) = gpu.iter().zip(cpu).position(|(a, b)| a != b) {
            panic!(
                "{what}: pixel byte {at} differs: gpu {} cpu {}",
                gpu[at], cpu[at]
            );
        }
        let (gpu_frame, cpu_frame) = (self.gpu.frame(), self.cpu.frame());
        assert_eq!(gpu_frame.is_some(), cpu_frame.is_some(), "{what}");
        if let (Some(gpu), Some(cpu)) = (gpu_frame, cpu_frame) {
            assert_eq!((gpu.1, gpu.2), (cpu.1, cpu.2), "{what}");
            if let Some(at) = gpu.0.iter().zip(cpu.0).position(|(a, b)| a != b) {
                panic!(
                    "{what}: I420 byte {at} differs: gpu {} cpu {}",
                    gpu.0[at], cpu.0[at]
                );
            }
        }
    }
}

fn solid(width: u32, height: u32, bgra: [u8; 4]) -> Vec<u8> {
    bgra.repeat((width * height) as usize)
}

fn noise(rng: &mut Rng, width: u32, height: u32) -> Vec<u8> {
    (0..width * height * 4)
        .map(|_| rng.0.random::<u8>())
        .collect()
}

fn draw(resource_id: u32, source: Rect, x: i32, y: i32, opacity: u8, clip: Rect) -> Draw {
    Draw {
        size: None,
        resource_id,
        source,
        x,
        y,
        opacity,
        clip,
        opaque: false,
    }
}

#[test]
fn the_gpu_composes_and_converts_exactly_like_the_cpu_reference() {
    let Some(renderer) = renderer() else {
        return;
    };
    let ledger = Arc::new(Ledger::default());
    let mut pair = Pair::new(renderer, &ledger);
    let mut rng = Rng::seeded(0x5eed_1234_abcd_ef01);
    let (width, height) = (320u32, 200u32);
    // Target 1 is the scanout; sources: opaque red, half-transparent
    // green, a noise image with every alpha, a fully transparent one.
    pair.upload(
        1,
        width,
        height,
        &solid(width, height, [0x20, 0x20, 0x20, 0xff]),
    );
    pair.upload(2, 64, 48, &solid(64, 48, [0, 0, 0xff, 0xff]));
    pair.upload(3, 100, 30, &solid(100, 30, [0, 0xff, 0, 0x80]));
    let noisy = noise(&mut rng, 90, 70);
    pair.upload(4, 90, 70, &noisy);
    pair.upload(5, 16, 16, &solid(16, 16, [9, 9, 9, 0]));
    // B8G8R8X8 (wl_shm XRGB8888): the fourth byte is padding, whatever it
    // holds — these pixels are opaque. R8G8B8A8 cannot be composed.
    let padded = noise(&mut rng, 40, 40);
    pair.upload_as(6, Format::B8G8R8X8, 40, 40, &padded);
    pair.upload_as(7, Format::R8G8B8A8, 8, 8, &solid(8, 8, [1, 2, 3, 4]));
    assert_eq!(
        pair.send(&build::ctx_create(1, CAPSET_COMPOSE, "compose"), None),
        resp::OK_NODATA
    );
    assert_eq!(
        pair.send(&build::set_scanout(rect(0, 0, width, height), 0, 1), None),
        resp::OK_NODATA
    );
    pair.check(1, "scanout set");
    // The frame is the CPU reference's conversion of the composed image.
    let frame = pair.gpu.frame().unwrap().0.to_vec();
    assert_eq!(frame, i420_cpu(pair.cpu.pixels(1).unwrap(), width, height));

    let screen = rect(0, 0, width, height);
    pair.frame(
        &CompositionList {
            target: 1,
            damage: vec![screen],
            draws: vec![
                draw(2, rect(0, 0, 64, 48), 10, 10, 255, screen),
                // Overlapping, translucent, partly off screen.
                draw(3, rect(0, 0, 100, 30), 40, 30, 255, screen),
                draw(3, rect(10, 5, 90, 25), 280, 190, 200, screen),
                draw(4, rect(0, 0, 90, 70), -20, -10, 255, screen),
                draw(4, rect(5, 5, 60, 60), 150, 100, 77, rect(160, 110, 30, 30)),
                draw(5, rect(0, 0, 16, 16), 200, 20, 255, screen),
                draw(6, rect(0, 0, 40, 40), 250, 120, 255, screen),
                draw(6, rect(0, 0, 40, 40), 270, 130, 100, screen),
                // The noise flagged opaque (a Wayland opaque region): a
                // copy at full opacity, its alpha ignored when blended.
                Draw {
                    opaque: true,
                    ..draw(4, rect(0, 0, 30, 20), 0, 170, 255, screen)
                },
                Draw {
                    opaque: true,
                    ..draw(4, rect(30, 20, 30, 20), 40, 170, 90, screen)
                },
                // Scaled (wp_viewporter): stretched across, squeezed down,
                // and a cropped part blown up past the screen's edge.
                Draw {
                    size: Some((180, 35)),
                    ..draw(4, rect(0, 0, 90, 70), 100, 60, 255, screen)
                },
                Draw {
                    size: Some((130, 90)),
                    ..draw(4, rect(20, 10, 13, 9), 230, 150, 160, screen)
                },
            ],
        },
        screen,
        "solid, alpha, overlap, clip, padding byte, scaling",
    );
    // The padded source landed opaque: copied as it is, colour and padding
    // byte (the target's fourth byte is not read as alpha).
    let target = pair.gpu.pixels(1).unwrap();
    let (at, from) = ((120 * width as usize + 250) * 4, 0);
    assert_eq!(&target[at..at + 4], &padded[from..from + 4]);
    // So did the noise flagged opaque, whatever its alpha.
    let (at, from) = ((175 * width as usize + 7) * 4, (5 * 90 + 7) * 4);
    assert_eq!(&target[at..at + 4], &noisy[from..from + 4]);
    // Partial damage: two overlapping rectangles (each pixel once) and one
    // off the screen; only those pixels change.
    pair.frame(
        &CompositionList {
            target: 1,
            damage: vec![
                rect(30, 30, 50, 20),
                rect(60, 40, 50, 20),
                rect(400, 400, 10, 10),
            ],
            draws: vec![
                draw(3, rect(0, 0, 100, 30), 20, 25, 128, screen),
                draw(4, rect(0, 0, 90, 70), 50, 20, 255, screen),
            ],
        },
        rect(30, 30, 80, 30),
        "overlapping partial damage",
    );
    // A flush of less than the damage: the frame only converts the flush.
    pair.frame(
        &CompositionList {
            target: 1,
            damage: vec![screen],
            draws: vec![draw(2, rect(0, 0, 64, 48), 0, 0, 255, screen)],
        },
        rect(0, 0, 8, 2),
        "small flush",
    );
    // Bad lists get the same errors on both.
    for bad in [
        CompositionList {
            target: 1,
            damage: vec![screen],
            draws: vec![draw(9, rect(0, 0, 1, 1), 0, 0, 255, screen)],
        },
        CompositionList {
            target: 1,
            damage: vec![screen],
            draws: vec![draw(2, rect(60, 0, 10, 10), 0, 0, 255, screen)],
        },
        CompositionList {
            target: 1,
            damage: vec![screen],
            draws: vec![draw(7, rect(0, 0, 8, 8), 0, 0, 255, screen)],
        },
        CompositionList {
            target: 7,
            damage: vec![screen],
            draws: vec![draw(2, rect(0, 0, 8, 8), 0, 0, 255, screen)],
        },
    ] {
        let submit = build::submit_3d(1, None, &bad.encode());
        assert_eq!(pair.send(&submit, None), resp::ERR_INVALID_PARAMETER);
    }
    pair.check(1, "after refused lists");

    // A scanout that is not at the origin, then one whose width the GPU's
    // converter cannot take (the CPU converts it, into the same frame).
    for (scanout, what) in [
        (rect(16, 10, 200, 120), "scanout at (16, 10)"),
        (rect(3, 1, 102, 60), "scanout 102 wide"),
    ] {
        assert_eq!(
            pair.send(&build::set_scanout(scanout, 0, 1), None),
            resp::OK_NODATA
        );
        pair.check(1, what);
        pair.frame(
            &CompositionList {
                target: 1,
                damage: vec![rect(0, 0, 120, 90)],
                draws: vec![draw(4, rect(0, 0, 90, 70), 17, 13, 255, screen)],
            },
            rect(0, 0, 120, 90),
            what,
        );
    }
    assert_eq!(
        pair.send(&build::set_scanout(screen, 0, 1), None),
        resp::OK_NODATA
    );

    // Random lists: random sources, positions (some off screen), opacity,
    // clips, damage.
    let sources = [2u32, 3, 4, 5, 6];
    let sizes = [(64u32, 48u32), (100, 30), (90, 70), (16, 16), (40, 40)];
    for round in 0..150 {
        let damage = (0..1 + rng.below(4))
            .map(|_| {
                rect(
                    rng.below(width),
                    rng.below(height),
                    1 + rng.below(200),
                    1 + rng.below(150),
                )
            })
            .collect();
        let draws = (0..rng.below(6))
            .map(|_| {
                let which = rng.below(5) as usize;
                let (w, h) = sizes[which];
                let sx = rng.below(w);
                let sy = rng.below(h);
                // A third of the draws scaled, up or down.
                let size =
                    (rng.below(3) == 0).then(|| (1 + rng.below(2 * w), 1 + rng.below(2 * h)));
                let draw = draw(
                    sources[which],
                    rect(sx, sy, 1 + rng.below(w - sx), 1 + rng.below(h - sy)),
                    rng.below(width + 60) as i32 - 30,
                    rng.below(height + 60) as i32 - 30,
                    rng.below(256) as u8,
                    rect(
                        rng.below(width),
                        rng.below(height),
                        rng.below(width),
                        rng.below(height),
                    ),
                );
                // A quarter flagged opaque.
                let opaque = rng.below(4) == 0;
                Draw {
                    size,
                    opaque,
                    ..draw
                }
            })
            .collect();
        let flush = rect(
            rng.below(width / 2),
            rng.below(height / 2),
            1 + rng.below(width / 2),
            1 + rng.below(height / 2),
        );
        pair.frame(
            &CompositionList {
                target: 1,
                damage,
                draws,
            },
            flush,
            &format!("random list {round}"),
        );
    }
    // Everything the GPU session allocated is charged, and freed with it.
    assert_eq!(
        ledger.total_charged(),
        pair.gpu.charged() + pair.cpu.charged()
    );
    drop(pair);
    assert_eq!(ledger.total_charged(), 0);
}

#[test]
fn desktops_sharing_one_gpu_each_get_their_own_frames() {
    let Some(renderer) = renderer() else {
        return;
    };
    let ledger = Arc::new(Ledger::default());
    // Eight desktops on one renderer, each on its own thread, each
    // composing its own colour many times; one more floods submissions.
    let threads: Vec<_> = (0..9u8)
        .map(|i| {
            let renderer = renderer.clone();
            let ledger = ledger.clone();
            std::thread::spawn(move || {
                let mut session = Session::with_renderer(
                    &format!("dt-{i}"),
                    1 << 24,
                    ledger,
                    64,
                    32,
                    Some(renderer),
                );
                let send = |session: &mut Session, command: &[u8], backing: Option<&[u8]>| {
                    answer(&session.handle(command, backing.map(memfd).into_iter().collect()))
                };
                let colour = [i, 255 - i, i.wrapping_mul(29), 0xff];
                let pixels = colour.repeat(64 * 32);
                let entry = MemEntry {
                    offset: 0,
                    length: pixels.len() as u32,
                };
                for (command, backing) in [
                    (build::resource_create_2d(1, Format::B8G8R8A8, 64, 32), None),
                    (build::resource_create_2d(2, Format::B8G8R8A8, 64, 32), None),
                    (build::attach_backing(2, &[entry]), Some(pixels.as_slice())),
                    (build::transfer_to_host_2d(rect(0, 0, 64, 32), 0, 2), None),
                    (build::ctx_create(1, CAPSET_COMPOSE, "c"), None),
                    (build::set_scanout(rect(0, 0, 64, 32), 0, 1), None),
                ] {
                    assert_eq!(send(&mut session, &command, backing), resp::OK_NODATA);
                }
                let list = CompositionList {
                    target: 1,
                    damage: vec![rect(0, 0, 64, 32)],
                    draws: vec![draw(2, rect(0, 0, 64, 32), 0, 0, 255, rect(0, 0, 64, 32))],
                };
                let frames = if i == 8 { 400 } else { 40 };
                for _ in 0..frames {
                    let submit = build::submit_3d(1, None, &list.encode());
                    assert_eq!(send(&mut session, &submit, None), resp::OK_NODATA);
                    let flush = build::resource_flush(rect(0, 0, 64, 32), 1);
                    assert_eq!(send(&mut session, &flush, None), resp::OK_NODATA);
                }
                assert_eq!(session.pixels(1).unwrap(), pixels.as_slice());
                let (frame, _, _, sequence) = session.frame().unwrap();
                assert_eq!(frame, i420_cpu(&pixels, 64, 32).as_slice());
                assert_eq!(sequence, frames + 1);
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("a desktop's thread");
    }
    assert_eq!(ledger.total_charged(), 0);
}
