//! Server-side decorations: the title bar the compositor draws above a
//! window whose client asked for server-side decorations (xdg-decoration).
//! A bar is the window's width and [`TITLE_HEIGHT`] pixels tall, B G R X,
//! with the window's title (or its app id) in Noto Sans Mono, anti-aliased,
//! pre-rasterised at 16 pixels (no font files, no text shaping: titles
//! are one line of left-to-right characters). Characters the font lacks
//! show as `?`; a title too long for the bar ends in `...`.

use noto_sans_mono_bitmap::{get_raster, get_raster_width, FontWeight, RasterHeight};

/// The bar's height in pixels.
pub const TITLE_HEIGHT: u32 = 24;
const FONT: RasterHeight = RasterHeight::Size16;
const WEIGHT: FontWeight = FontWeight::Regular;
/// Space left of the text.
const PADDING: u32 = 8;
/// The bar of the focused window, of the others, and the text, B G R.
pub const FOCUSED_BGR: [u8; 3] = [0x5a, 0x46, 0x32];
pub const UNFOCUSED_BGR: [u8; 3] = [0x3c, 0x34, 0x2c];
pub const TEXT_BGR: [u8; 3] = [0xee, 0xee, 0xee];

/// How many characters fit in a bar `width` pixels wide.
fn capacity(width: u32) -> usize {
    (width.saturating_sub(2 * PADDING) as usize) / get_raster_width(WEIGHT, FONT)
}

/// The characters shown for `title` in a bar `width` pixels wide: control
/// characters dropped, the rest cut to fit with `...` at the end.
pub fn shown(title: &str, width: u32) -> Vec<char> {
    let chars: Vec<char> = title.chars().filter(|c| !c.is_control()).collect();
    let room = capacity(width);
    if chars.len() <= room {
        return chars;
    }
    let mut cut: Vec<char> = chars.into_iter().take(room.saturating_sub(3)).collect();
    cut.extend("...".chars().take(room));
    cut
}

/// The bar's pixels: `width` × [`TITLE_HEIGHT`], B G R X.
pub fn title_bar(width: u32, title: &str, focused: bool) -> Vec<u8> {
    let background = if focused { FOCUSED_BGR } else { UNFOCUSED_BGR };
    let mut pixels = Vec::with_capacity(width as usize * TITLE_HEIGHT as usize * 4);
    for _ in 0..width as usize * TITLE_HEIGHT as usize {
        pixels.extend_from_slice(&[background[0], background[1], background[2], 0xff]);
    }
    let advance = get_raster_width(WEIGHT, FONT) as u32;
    let top = (TITLE_HEIGHT - FONT.val() as u32) / 2;
    for (index, c) in shown(title, width).into_iter().enumerate() {
        let Some(glyph) = get_raster(c, WEIGHT, FONT).or_else(|| get_raster('?', WEIGHT, FONT))
        else {
            continue;
        };
        let left = PADDING + index as u32 * advance;
        for (y, row) in glyph.rows().enumerate() {
            for (x, &coverage) in row.iter().enumerate() {
                let (px, py) = (left + x as u32, top + y as u32);
                if coverage == 0 || px >= width || py >= TITLE_HEIGHT {
                    continue;
                }
                let at = (py as usize * width as usize + px as usize) * 4;
                for channel in 0..3 {
                    let (fg, bg) = (u32::from(TEXT_BGR[channel]), u32::from(background[channel]));
                    let alpha = u32::from(coverage);
                    pixels[at + channel] = ((fg * alpha + bg * (255 - alpha)) / 255) as u8;
                }
            }
        }
    }
    pixels
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns_with_text(pixels: &[u8], width: u32, background: [u8; 3]) -> Vec<u32> {
        (0..width)
            .filter(|&x| {
                (0..TITLE_HEIGHT).any(|y| {
                    let at = ((y * width + x) * 4) as usize;
                    pixels[at..at + 3] != background
                })
            })
            .collect()
    }

    #[test]
    fn a_title_is_drawn_from_the_left_on_the_bar() {
        let bar = title_bar(200, "foot", true);
        assert_eq!(bar.len(), 200 * TITLE_HEIGHT as usize * 4);
        let text = columns_with_text(&bar, 200, FOCUSED_BGR);
        assert!(!text.is_empty(), "no text drawn");
        assert!(*text.first().unwrap() >= PADDING);
        let advance = get_raster_width(WEIGHT, FONT) as u32;
        assert!(*text.last().unwrap() < PADDING + 4 * advance);
        // The unfocused bar differs only in its background.
        let other = title_bar(200, "foot", false);
        assert_eq!(columns_with_text(&other, 200, UNFOCUSED_BGR), text);
        // Nothing to draw: just the bar.
        assert!(columns_with_text(&title_bar(200, "", true), 200, FOCUSED_BGR).is_empty());
    }

    #[test]
    fn long_titles_are_cut_and_unknown_characters_are_replaced() {
        let advance = get_raster_width(WEIGHT, FONT) as u32;
        let width = 2 * PADDING + 10 * advance;
        assert_eq!(shown("0123456789", width).len(), 10);
        let cut: String = shown("a title much longer than the bar", width)
            .into_iter()
            .collect();
        assert_eq!(cut, "a title...");
        assert_eq!(
            shown("tab\tand\nnewline", 1000)
                .into_iter()
                .collect::<String>(),
            "tabandnewline"
        );
        // A narrow bar shows what fits, a bar too narrow for any
        // character nothing.
        assert!(shown("title", 2 * PADDING).is_empty());
        // Characters outside the font are drawn as `?`.
        assert_eq!(title_bar(100, "\u{4e2d}", true), title_bar(100, "?", true));
    }
}
