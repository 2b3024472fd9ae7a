//! The board: the web UI the control plane serves — the Kanban (create,
//! edit, drag tasks between columns, live updates from the watch stream,
//! live thumbnails), a desktop's live view (WebCodecs H.264, JPEG frames
//! where WebCodecs is missing; take control, type, point, paste) and the
//! nodes page (capacity, cordon, uncordon, drain). Plain HTML, CSS and
//! JavaScript compiled into the binary: nothing to build, no Node.js.

/// `GET /`.
pub const INDEX_HTML: &str = include_str!("../assets/index.html");
/// `GET /ui/app.js`.
pub const APP_JS: &str = include_str!("../assets/app.js");
/// `GET /ui/style.css`.
pub const STYLE_CSS: &str = include_str!("../assets/style.css");

/// Every asset: path, content type, body.
pub const ASSETS: [(&str, &str, &str); 3] = [
    ("/", "text/html; charset=utf-8", INDEX_HTML),
    ("/ui/app.js", "text/javascript; charset=utf-8", APP_JS),
    ("/ui/style.css", "text/css; charset=utf-8", STYLE_CSS),
];

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_loads_the_script_and_the_style() {
        assert!(super::INDEX_HTML.contains("src=\"/ui/app.js\""));
        assert!(super::INDEX_HTML.contains("href=\"/ui/style.css\""));
        // Every element the script looks up exists in the page.
        for id in super::APP_JS
            .split("$('")
            .skip(1)
            .filter_map(|rest| rest.split('\'').next())
        {
            assert!(
                super::INDEX_HTML.contains(&format!("id=\"{id}\"")),
                "the page has no #{id}"
            );
        }
    }
}
