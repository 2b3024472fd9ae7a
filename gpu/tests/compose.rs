//! The composition list and its CPU reference: exact pixels for solid
//! colours, alpha, opacity, overlapping draws, clips and partial damage;
//! the I420 conversion against hand-computed values; arbitrary bytes never
//! panic the decoder.

use flotilla_gpu::compose::{compose_cpu, i420_cpu, CompositionList, Draw, Image, MAGIC};
use flotilla_gpu::protocol::Rect;
use proptest::prelude::*;

fn rect(x: u32, y: u32, width: u32, height: u32) -> Rect {
    Rect {
        x,
        y,
        width,
        height,
    }
}

fn solid(width: u32, height: u32, bgra: [u8; 4]) -> Vec<u8> {
    bgra.repeat((width * height) as usize)
}

fn pixel(image: &[u8], width: u32, x: u32, y: u32) -> [u8; 4] {
    let at = ((y * width + x) * 4) as usize;
    image[at..at + 4].try_into().unwrap()
}

fn draw(resource_id: u32, source: Rect, x: i32, y: i32, opacity: u8) -> Draw {
    Draw {
        size: None,
        resource_id,
        source,
        x,
        y,
        opacity,
        clip: rect(0, 0, u32::MAX / 2, u32::MAX / 2),
        opaque: false,
    }
}

#[test]
fn solid_alpha_overlap_clip_and_damage_give_exact_pixels() {
    let (w, h) = (8u32, 8u32);
    let red = solid(4, 4, [0, 0, 255, 255]);
    let half_blue = solid(4, 4, [255, 0, 0, 128]);
    let sources = |id: u32| match id {
        1 => Some(Image {
            opaque: false,
            pixels: &red,
            width: 4,
            height: 4,
        }),
        2 => Some(Image {
            opaque: false,
            pixels: &half_blue,
            width: 4,
            height: 4,
        }),
        _ => None,
    };
    let mut target = solid(w, h, [0, 0, 0, 255]);
    let list = CompositionList {
        target: 9,
        damage: vec![rect(0, 0, 8, 8)],
        draws: vec![
            draw(1, rect(0, 0, 4, 4), 0, 0, 255),
            // Half-transparent blue overlapping red at (2..6, 2..6).
            draw(2, rect(0, 0, 4, 4), 2, 2, 255),
            // Red again at 50 % opacity, off the edge (clipped by the screen).
            draw(1, rect(0, 0, 4, 4), 6, 6, 128),
        ],
    };
    let bytes = list.encode();
    assert_eq!(CompositionList::decode(&bytes).unwrap(), list);
    compose_cpu(&list, &mut target, w, h, sources).unwrap();
    assert_eq!(pixel(&target, w, 0, 0), [0, 0, 255, 255], "red");
    assert_eq!(
        pixel(&target, w, 3, 3),
        [128, 0, 127, 255],
        "blue 50 % over red"
    );
    assert_eq!(
        pixel(&target, w, 5, 5),
        [128, 0, 0, 255],
        "blue 50 % over black"
    );
    assert_eq!(
        pixel(&target, w, 7, 7),
        [0, 0, 128, 255],
        "red at 50 % opacity over black"
    );
    assert_eq!(pixel(&target, w, 7, 0), [0, 0, 0, 255], "untouched");

    // Only damaged pixels change; the clip limits a draw too.
    let mut target = solid(w, h, [0, 0, 0, 255]);
    let mut clipped = draw(1, rect(0, 0, 4, 4), 0, 0, 255);
    clipped.clip = rect(0, 0, 2, 4);
    let list = CompositionList {
        target: 9,
        damage: vec![rect(0, 0, 8, 1), rect(0, 3, 1, 1)],
        draws: vec![clipped],
    };
    compose_cpu(&list, &mut target, w, h, sources).unwrap();
    for (x, y, red) in [
        (0, 0, true),
        (1, 0, true),
        (2, 0, false),
        (0, 1, false),
        (0, 3, true),
        (1, 3, false),
    ] {
        let expected = if red {
            [0, 0, 255, 255]
        } else {
            [0, 0, 0, 255]
        };
        assert_eq!(pixel(&target, w, x, y), expected, "({x}, {y})");
    }
    // Overlapping damage: a translucent draw still applies once.
    let mut target = solid(w, h, [0, 0, 0, 255]);
    let list = CompositionList {
        target: 9,
        damage: vec![rect(0, 0, 4, 4), rect(2, 2, 4, 4)],
        draws: vec![draw(2, rect(0, 0, 4, 4), 2, 2, 255)],
    };
    compose_cpu(&list, &mut target, w, h, sources).unwrap();
    assert_eq!(pixel(&target, w, 3, 3), [128, 0, 0, 255], "once, not twice");
    // Flagged opaque (the client's opaque region covers it): the half-blue
    // source's bytes replace the target's as they are; at half opacity
    // its colour counts as alpha 255, scaled by the opacity.
    let mut target = solid(w, h, [0, 0, 0, 255]);
    let list = CompositionList {
        target: 9,
        damage: vec![rect(0, 0, 8, 8)],
        draws: vec![
            Draw {
                opaque: true,
                ..draw(2, rect(0, 0, 4, 4), 0, 0, 255)
            },
            Draw {
                opaque: true,
                ..draw(2, rect(0, 0, 4, 4), 4, 4, 128)
            },
        ],
    };
    assert_eq!(
        CompositionList::decode(&list.encode()).unwrap(),
        list,
        "the flag travels"
    );
    compose_cpu(&list, &mut target, w, h, sources).unwrap();
    assert_eq!(pixel(&target, w, 1, 1), [255, 0, 0, 128], "copied");
    assert_eq!(pixel(&target, w, 5, 5), [128, 0, 0, 255], "opaque at 50 %");
    // A draw of an unknown resource, or a source outside its resource.
    let list = CompositionList {
        target: 9,
        damage: vec![rect(0, 0, 8, 8)],
        draws: vec![draw(7, rect(0, 0, 1, 1), 0, 0, 255)],
    };
    assert!(compose_cpu(&list, &mut target, w, h, sources).is_err());
    let list = CompositionList {
        target: 9,
        damage: vec![rect(0, 0, 8, 8)],
        draws: vec![draw(1, rect(2, 2, 4, 4), 0, 0, 255)],
    };
    assert!(compose_cpu(&list, &mut target, w, h, sources).is_err());
}

#[test]
fn i420_matches_hand_computed_bt601_values() {
    // 2×2 white, then 2×2 pure red: Y 235 / 82, U 128 / 90, V 128 / 240.
    let mut image = solid(4, 2, [255, 255, 255, 255]);
    for y in 0..2 {
        for x in 2..4 {
            let at = (y * 4 + x) * 4;
            image[at..at + 4].copy_from_slice(&[0, 0, 255, 255]);
        }
    }
    let i420 = i420_cpu(&image, 4, 2);
    assert_eq!(i420.len(), 4 * 2 + 2 + 2);
    assert_eq!(&i420[0..8], &[235, 235, 82, 82, 235, 235, 82, 82]);
    assert_eq!(&i420[8..10], &[128, 90]);
    assert_eq!(&i420[10..12], &[128, 240]);
}

#[test]
fn bad_lists_are_refused() {
    let good = CompositionList {
        target: 1,
        damage: vec![rect(0, 0, 1, 1)],
        draws: vec![draw(2, rect(0, 0, 1, 1), 0, 0, 255)],
    }
    .encode();
    assert!(CompositionList::decode(&good).is_ok());
    let mut magic = good.clone();
    magic[0] = 0;
    assert!(CompositionList::decode(&magic).is_err());
    let mut version = good.clone();
    version[4] = 3;
    assert!(CompositionList::decode(&version).is_err());
    // A version 1 header on a version 2 body: the length is wrong.
    let mut older = good.clone();
    older[4] = 1;
    assert!(CompositionList::decode(&older).is_err());
    assert!(CompositionList::decode(&good[..good.len() - 1]).is_err());
    // Bit 0 is the opaque flag; any other bit is refused.
    let mut flags = good.clone();
    flags[20 + 16 + 29] = 1;
    assert!(CompositionList::decode(&flags).unwrap().draws[0].opaque);
    flags[20 + 16 + 29] = 2;
    assert!(CompositionList::decode(&flags).is_err());
    flags[20 + 16 + 29] = 0;
    flags[20 + 16 + 30] = 1;
    assert!(CompositionList::decode(&flags).is_err());
    let mut overflow = good.clone();
    overflow[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(CompositionList::decode(&overflow).is_err());
    let mut many = good.clone();
    many[12..16].copy_from_slice(&1000u32.to_le_bytes());
    assert!(CompositionList::decode(&many).is_err());
    assert_eq!(u32::from_le_bytes(good[0..4].try_into().unwrap()), MAGIC);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]
    #[test]
    fn arbitrary_streams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = CompositionList::decode(&bytes);
        for version in [1u32, 2] {
        let mut framed = MAGIC.to_le_bytes().to_vec();
        framed.extend_from_slice(&version.to_le_bytes());
        framed.extend_from_slice(&bytes);
        if let Ok(list) = CompositionList::decode(&framed) {
            // Whatever decodes renders (or is refused) without a panic.
            let source = vec![255u8; 16 * 16 * 4];
            let mut target = vec![0u8; 16 * 16 * 4];
            let _ = compose_cpu(&list, &mut target, 16, 16, |_| Some(Image { pixels: &source, width: 16, height: 16, opaque: false }));
        }
        }
    }
}

#[test]
fn scaled_draws_take_the_source_pixel_under_each_target_pixel_centre() {
    // A 4×4 source whose pixels are all different.
    let source: Vec<u8> = (0..16u8).flat_map(|i| [i, 100 + i, 200, 255]).collect();
    let sources = |id: u32| {
        (id == 1).then(|| Image {
            opaque: false,
            pixels: &source,
            width: 4,
            height: 4,
        })
    };
    let at = |x: u32, y: u32| (y * 4 + x) as u8;
    // Up: its top-left 2×2 blown up to 4×4 at (1, 1), each pixel twice.
    let mut target = solid(6, 6, [0, 0, 0, 255]);
    let list = CompositionList {
        target: 9,
        damage: vec![rect(0, 0, 6, 6)],
        draws: vec![Draw {
            size: Some((4, 4)),
            ..draw(1, rect(0, 0, 2, 2), 1, 1, 255)
        }],
    };
    compose_cpu(&list, &mut target, 6, 6, sources).unwrap();
    for y in 0..4 {
        for x in 0..4 {
            assert_eq!(
                pixel(&target, 6, 1 + x, 1 + y)[0],
                at(x / 2, y / 2),
                "({x}, {y})"
            );
        }
    }
    assert_eq!(pixel(&target, 6, 0, 0), [0, 0, 0, 255], "outside the draw");
    assert_eq!(pixel(&target, 6, 5, 5), [0, 0, 0, 255], "outside the draw");
    // Down: all of it in 2×2, the pixels under the centres (1 and 3).
    let mut target = solid(2, 2, [0, 0, 0, 255]);
    let list = CompositionList {
        target: 9,
        damage: vec![rect(0, 0, 2, 2)],
        draws: vec![Draw {
            size: Some((2, 2)),
            ..draw(1, rect(0, 0, 4, 4), 0, 0, 255)
        }],
    };
    compose_cpu(&list, &mut target, 2, 2, sources).unwrap();
    assert_eq!(pixel(&target, 2, 0, 0)[0], at(1, 1));
    assert_eq!(pixel(&target, 2, 1, 0)[0], at(3, 1));
    assert_eq!(pixel(&target, 2, 1, 1)[0], at(3, 3));
    // The size survives the stream; version 1 streams (no size) still
    // decode; sizes out of range are refused.
    let decoded = CompositionList::decode(&list.encode()).unwrap();
    assert_eq!(decoded, list);
    let mut v1 = Vec::new();
    for value in [MAGIC, 1, 9, 1, 0] {
        v1.extend_from_slice(&value.to_le_bytes());
    }
    let unscaled = CompositionList {
        target: 9,
        damage: vec![],
        draws: vec![draw(1, rect(0, 0, 4, 4), 0, 0, 255)],
    };
    v1.extend_from_slice(&unscaled.encode()[20..20 + 48]);
    assert_eq!(CompositionList::decode(&v1).unwrap(), unscaled);
    for size in [(0, 5), (5, 0), (16385, 1)] {
        let mut bad = list.encode();
        let at = bad.len() - 8;
        bad[at..at + 4].copy_from_slice(&u32::to_le_bytes(size.0));
        bad[at + 4..].copy_from_slice(&u32::to_le_bytes(size.1));
        assert!(CompositionList::decode(&bad).is_err(), "{size:?}");
    }
}
