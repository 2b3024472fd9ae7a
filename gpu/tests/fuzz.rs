//! Mutation fuzzing of everything a guest can send: the command decoder,
//! the composition list, and a live session behind them (on the CPU and
//! on the GPU), starting from the seed corpus in `gpu/fuzz/corpus/` —
//! one valid instance of every command and a few composition lists.
//!
//! Each case takes a seed and applies up to six mutations (byte flips,
//! interesting u32 values at aligned offsets, truncation, extension,
//! splices of another seed). Whatever comes out, gpud must answer with a
//! well-formed response, never panic, keep working for the next command,
//! and keep its ledger equal to what the session holds.
//!
//! Bounded: `FLOTILLA_FUZZ_CASES` cases (default 20,000; the GPU session
//! runs a tenth of them). Set `FLOTILLA_WRITE_CORPUS=1` to rewrite the
//! corpus from the builders below after a protocol change.

mod common;
use common::{memfd, renderer};

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use flotilla_gpu::compose::{CompositionList, Draw};
use flotilla_gpu::protocol::{build, decode, resp, Format, MemEntry, Rect};
use flotilla_gpu::render::Renderer;
use flotilla_gpu::session::{Ledger, Session, CAPSET_COMPOSE};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn rect(x: u32, y: u32, width: u32, height: u32) -> Rect {
    Rect {
        x,
        y,
        width,
        height,
    }
}

fn list() -> CompositionList {
    CompositionList {
        target: 3,
        damage: vec![rect(0, 0, 64, 64), rect(10, 10, 20, 20)],
        draws: vec![
            Draw {
                size: None,
                resource_id: 1,
                source: rect(0, 0, 64, 64),
                x: 0,
                y: 0,
                opacity: 255,
                clip: rect(0, 0, 64, 64),
                opaque: false,
            },
            Draw {
                size: None,
                resource_id: 2,
                source: rect(4, 4, 16, 16),
                x: -3,
                y: 40,
                opacity: 100,
                clip: rect(0, 0, 30, 64),
                opaque: false,
            },
        ],
    }
}

/// The corpus: (directory, name, bytes).
fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let entry = |offset, length| MemEntry { offset, length };
    let commands = vec![
        ("get_display_info", build::get_display_info()),
        (
            "resource_create_2d",
            build::resource_create_2d(5, Format::B8G8R8A8, 64, 32),
        ),
        ("resource_unref", build::resource_unref(2)),
        ("set_scanout", build::set_scanout(rect(0, 0, 64, 64), 0, 3)),
        (
            "resource_flush",
            build::resource_flush(rect(8, 8, 16, 16), 3),
        ),
        (
            "transfer_to_host_2d",
            build::transfer_to_host_2d(rect(2, 2, 8, 8), 520, 1),
        ),
        (
            "attach_backing",
            build::attach_backing(5, &[entry(0, 4096), entry(4096, 4096)]),
        ),
        ("detach_backing", build::detach_backing(1)),
        ("get_capset_info", build::get_capset_info(0)),
        ("get_capset", build::get_capset(CAPSET_COMPOSE, 1)),
        ("ctx_create", build::ctx_create(2, CAPSET_COMPOSE, "fuzz")),
        ("ctx_destroy", build::ctx_destroy(1)),
        ("ctx_attach_resource", build::ctx_attach_resource(1, 1)),
        ("ctx_detach_resource", build::ctx_detach_resource(1, 1)),
        ("submit_3d", build::submit_3d(1, Some(9), &list().encode())),
    ];
    let mut seeds: Vec<_> = commands
        .into_iter()
        .map(|(name, bytes)| ("commands", name, bytes))
        .collect();
    seeds.push(("lists", "two_draws", list().encode()));
    let mut one = list();
    one.damage = vec![rect(0, 0, 1, 1)];
    one.draws.truncate(1);
    seeds.push(("lists", "one_pixel", one.encode()));
    let mut scaled = list();
    scaled.draws[0].size = Some((7, 3));
    seeds.push(("lists", "scaled", scaled.encode()));
    seeds.push((
        "lists",
        "empty",
        CompositionList {
            target: 3,
            damage: vec![],
            draws: vec![],
        }
        .encode(),
    ));
    seeds
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}

#[test]
fn the_seed_corpus_is_what_the_builders_make() {
    let write = std::env::var_os("FLOTILLA_WRITE_CORPUS").is_some();
    for (dir, name, bytes) in seeds() {
        let path = corpus_dir().join(dir).join(format!("{name}.bin"));
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let stored = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (FLOTILLA_WRITE_CORPUS=1 writes it)",
                path.display()
            )
        });
        assert_eq!(stored, bytes, "{} is stale", path.display());
        if dir == "commands" {
            let fds = if name == "attach_backing" { 2 } else { 0 };
            assert!(decode(&stored, fds).is_ok(), "{name} must decode");
        } else {
            assert!(
                CompositionList::decode(&stored).is_ok(),
                "{name} must decode"
            );
        }
    }
}

/// The corpus as stored (the files, not the builders).
fn corpus(dir: &str) -> Vec<Vec<u8>> {
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir().join(dir))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| std::fs::read(path).unwrap())
        .collect()
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bits: u8 },
    Word { at: usize, value: u32 },
    Truncate { to: usize },
    Extend { bytes: Vec<u8> },
    Splice { seed: usize, at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting = prop_oneof![
        Just(0u32),
        Just(1),
        Just(2),
        Just(3),
        Just(0x7fff_ffff),
        Just(0x8000_0000),
        Just(u32::MAX),
        Just(u32::MAX - 3),
        Just(16384),
        Just(16385),
        Just(0x4643),
        Just(0x504d_4346),
        any::<u32>(),
    ];
    prop_oneof![
        (any::<usize>(), 1u8..).prop_map(|(at, bits)| Mutation::Flip { at, bits }),
        (any::<usize>(), interesting).prop_map(|(at, value)| Mutation::Word { at, value }),
        any::<usize>().prop_map(|to| Mutation::Truncate { to }),
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(|bytes| Mutation::Extend { bytes }),
        (any::<usize>(), any::<usize>()).prop_map(|(seed, at)| Mutation::Splice { seed, at }),
    ]
}

fn mutate(seed: &[u8], mutations: &[Mutation], others: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for mutation in mutations {
        match mutation {
            Mutation::Flip { at, bits } if !bytes.is_empty() => {
                let at = at % bytes.len();
                bytes[at] ^= bits;
            }
            Mutation::Word { at, value } if bytes.len() >= 4 => {
                let at = (at % (bytes.len() / 4)) * 4;
                bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
            }
            Mutation::Truncate { to } => bytes.truncate(to % (bytes.len() + 1)),
            Mutation::Extend { bytes: more } => bytes.extend_from_slice(more),
            Mutation::Splice { seed, at } => {
                let other = &others[seed % others.len()];
                let at = at % (bytes.len() + 1);
                bytes.truncate(at);
                bytes.extend_from_slice(&other[at.min(other.len())..]);
            }
            _ => {}
        }
    }
    bytes
}

fn answer(response: &[u8]) -> u32 {
    u32::from_le_bytes(response[0..4].try_into().unwrap())
}

/// A session with something to aim at: resources 1 (64×64, backed) and
/// 2 (32×32), 3 (64×64, the scanout), context 1.
fn session(renderer: Option<Arc<Renderer>>, ledger: &Arc<Ledger>) -> Session {
    let mut session =
        Session::with_renderer("dt-fuzz", 1 << 22, ledger.clone(), 640, 480, renderer);
    let backing = vec![0x5a; 64 * 64 * 4];
    let entry = MemEntry {
        offset: 0,
        length: backing.len() as u32,
    };
    for (command, fds) in [
        (
            build::resource_create_2d(1, Format::B8G8R8A8, 64, 64),
            vec![],
        ),
        (
            build::resource_create_2d(2, Format::B8G8R8X8, 32, 32),
            vec![],
        ),
        (
            build::resource_create_2d(3, Format::B8G8R8A8, 64, 64),
            vec![],
        ),
        (build::attach_backing(1, &[entry]), vec![memfd(&backing)]),
        (build::transfer_to_host_2d(rect(0, 0, 64, 64), 0, 1), vec![]),
        (build::ctx_create(1, CAPSET_COMPOSE, "fuzz"), vec![]),
        (build::set_scanout(rect(0, 0, 64, 64), 0, 3), vec![]),
    ] {
        assert_eq!(answer(&session.handle(&command, fds)), resp::OK_NODATA);
    }
    session
}

/// Feeds `bytes` (with `fds` memfds) and checks gpud's answer and state.
fn feed(session: &mut Session, ledger: &Ledger, bytes: &[u8], fds: usize) {
    let descriptors: Vec<OwnedFd> = (0..fds).map(|_| memfd(&[0u8; 8192])).collect();
    let reply = session.handle(bytes, descriptors);
    assert!(reply.len() >= 24, "a short answer: {reply:?}");
    let kind = answer(&reply);
    assert!(
        (resp::OK_NODATA..resp::OK_NODATA + 0x100).contains(&kind)
            || (resp::ERR_UNSPEC..resp::ERR_UNSPEC + 0x100).contains(&kind),
        "answer type {kind:#x}"
    );
    // Still serving, and the ledger holds exactly what the session holds.
    let info = session.handle(&build::get_display_info(), vec![]);
    assert_eq!(answer(&info), resp::OK_DISPLAY_INFO);
    assert_eq!(ledger.total_charged(), session.charged());
}

fn cases() -> u32 {
    std::env::var("FLOTILLA_FUZZ_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(20_000)
}

fn run(cases: u32, renderer: Option<Arc<Renderer>>) {
    let commands = corpus("commands");
    let lists = corpus("lists");
    assert!(
        commands.len() >= 15 && lists.len() >= 3,
        "the corpus is missing"
    );
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        any::<usize>(),
        proptest::collection::vec(mutation(), 0..6),
        0usize..3,
        any::<bool>(),
    );
    let ledger = Arc::new(Ledger::default());
    // One session per desktop at a time (as gpud serves them).
    let live = std::cell::RefCell::new(Some(session(renderer.clone(), &ledger)));
    let fed = std::cell::Cell::new(0u32);
    runner
        .run(&strategy, |(seed, mutations, fds, as_list)| {
            let bytes = if as_list {
                let list = mutate(&lists[seed % lists.len()], &mutations, &lists);
                // The list alone, then inside a SUBMIT_3D.
                let _ = CompositionList::decode(&list);
                build::submit_3d(1, None, &list)
            } else {
                mutate(&commands[seed % commands.len()], &mutations, &commands)
            };
            let _ = decode(&bytes, fds);
            feed(
                live.borrow_mut().as_mut().expect("live"),
                &ledger,
                &bytes,
                fds,
            );
            // A fresh session now and then, so that state the mutations
            // destroyed (contexts, resources) comes back.
            fed.set(fed.get() + 1);
            if fed.get().is_multiple_of(64) {
                *live.borrow_mut() = None;
                *live.borrow_mut() = Some(session(renderer.clone(), &ledger));
            }
            Ok(())
        })
        .unwrap();
    drop(live.into_inner());
    assert_eq!(ledger.total_charged(), 0);
}

#[test]
fn mutated_commands_and_lists_never_break_a_cpu_session() {
    run(cases(), None);
}

#[test]
fn mutated_commands_and_lists_never_break_a_gpu_session() {
    if let Some(renderer) = renderer() {
        run(cases() / 10, Some(renderer));
    }
}
