//! The board end to end in a real browser (headless Chromium over the
//! DevTools protocol), against a real server and node agent with desktop
//! sessions (foot on lavapipe), as root (CI runs it): sign in with the
//! one-time link, create a task, drag it to Planning, watch its desktop
//! live, see its model usage and a budget stopping it, take control and
//! type a command, move the card to Done and see
//! the desktop go. Page screenshots are kept in the temp dir when a step
//! fails.

use std::time::{Duration, Instant};

use flotilla_tests::cdp::Browser;
use flotilla_tests::{flotilla_bin, netns, AgentProcess, ServerFlags, TestCluster};
use serde_json::{json, Value};

/// `step` or, when it fails, a page screenshot and the error.
async fn step<T>(
    browser: &mut Browser,
    name: &str,
    result: anyhow::Result<T>,
) -> anyhow::Result<T> {
    match result {
        Ok(value) => Ok(value),
        Err(error) => {
            let path = std::env::temp_dir().join(format!("flotilla-board-{name}.png"));
            let saved = browser.screenshot(&path).await;
            let text = browser
                .eval("document.body.innerText")
                .await
                .unwrap_or_default();
            anyhow::bail!(
                "{name}: {error:#}\npage screenshot: {saved:?}\npage text:\n{}",
                text.as_str().unwrap_or_default()
            )
        }
    }
}

/// A browser signed in through a one-time link (as `flotilla dev` prints)
/// and showing the board; the code it used.
async fn signed_in_browser(
    cluster: &TestCluster,
    width: u32,
    height: u32,
    name: &str,
) -> anyhow::Result<(Browser, Value)> {
    let addr = &cluster.servers[0].addr;
    let minted: Value = cluster
        .http
        .post(format!("http://{addr}/api/v1/session/codes"))
        .bearer_auth(&cluster.token)
        .send()
        .await?
        .json()
        .await?;
    let link = format!(
        "http://{addr}{}",
        minted["link"].as_str().unwrap_or_default()
    );
    let mut browser = Browser::start(width, height).await?;
    browser.navigate(&link).await?;
    let signed_in = browser
        .wait_for(
            "the board",
            "!document.getElementById('board').hidden && document.querySelectorAll('.column').length === 5",
            Duration::from_secs(20),
        )
        .await;
    step(&mut browser, name, signed_in).await?;
    Ok((browser, minted["code"].clone()))
}

/// A JS expression: the card of the task titled `title` is in `column`.
fn card_in(column: &str, title: &str) -> String {
    format!(
        "[...document.querySelectorAll('.column[data-column={column}] .card .title')]\
         .some(t => t.textContent === {title:?})"
    )
}

/// Drops the card titled `title` on `column`, as a drag would.
fn drop_on(column: &str, title: &str) -> String {
    format!(
        "(() => {{ const card = [...document.querySelectorAll('.card')]\
            .find(c => c.querySelector('.title').textContent === {title:?});\
          const data = new DataTransfer(); data.setData('text/plain', card.dataset.task);\
          card.dispatchEvent(new DragEvent('dragstart', {{bubbles: true, dataTransfer: data}}));\
          document.querySelector('.column[data-column={column}]')\
            .dispatchEvent(new DragEvent('drop', {{bubbles: true, cancelable: true, dataTransfer: data}}));\
          return true; }})()"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_drives_a_desktop_from_the_board() -> anyhow::Result<()> {
    if !netns::available()? {
        return Ok(());
    }
    let have = |program: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()))
    };
    if !have("foot")
        || !flotilla_tests::cdp::available()
        || flotilla_gpu::enumerate().map_or(true, |gpus| gpus.is_empty())
    {
        assert!(
            std::env::var_os("FLOTILLA_REQUIRE_VULKAN").is_none(),
            "foot, chromium and a Vulkan device are needed \
             (apt-get install foot chromium mesa-vulkan-drivers)"
        );
        return Ok(());
    }
    let cluster = TestCluster::start(1, ServerFlags(vec![])).await?;
    let addr = cluster.servers[0].addr.clone();
    let base = format!("http://{addr}/api/v1");
    let log = cluster.root.path().join("agent.log");
    let _agent = AgentProcess::start_with_sessions(
        &cluster,
        "board-node",
        &cluster.root.path().join("agent"),
        &log,
        "640x480",
        &["foot"],
    )?;
    let (mut browser, code) = signed_in_browser(&cluster, 1400, 1000, "sign-in").await?;
    // The code was used: it does not sign in again.
    let again = cluster
        .http
        .post(format!("{base}/session"))
        .json(&json!({"code": code}))
        .send()
        .await?;
    assert_eq!(again.status().as_u16(), 401);

    // A second person's board, signed in with a code of their own: it
    // sees the first person's changes live.
    let (mut other, _) = signed_in_browser(&cluster, 1200, 900, "other-sign-in").await?;

    // Create a task; it appears in Backlog (through the watch stream).
    browser
        .eval(
            "document.getElementById('create-title').value = 'watch the desktop'; \
             document.getElementById('create-repository').value = 'demo/app'; \
             document.getElementById('create-form').requestSubmit(); true",
        )
        .await?;
    let created = browser
        .wait_for(
            "the new card",
            &card_in("backlog", "watch the desktop"),
            Duration::from_secs(10),
        )
        .await;
    step(&mut browser, "create", created).await?;
    let seen = other
        .wait_for(
            "the new card on the other board",
            &card_in("backlog", "watch the desktop"),
            Duration::from_secs(10),
        )
        .await;
    step(&mut other, "other-create", seen).await?;
    // The card shows its repository.
    let repo = other
        .wait_for(
            "the card's repository",
            "[...document.querySelectorAll('.card .repo')].some(r => r.textContent === 'demo/app')",
            Duration::from_secs(10),
        )
        .await;
    step(&mut other, "card-repository", repo).await?;

    // Drag it to Planning: its desktop is placed, starts, and its card
    // shows a live thumbnail.
    let started = Instant::now();
    browser
        .eval(&drop_on("planning", "watch the desktop"))
        .await?;
    let seen = other
        .wait_for(
            "the move on the other board",
            &card_in("planning", "watch the desktop"),
            Duration::from_secs(10),
        )
        .await;
    step(&mut other, "other-move", seen).await?;
    drop(other);
    let thumbnail = browser
        .wait_for(
            "the card's thumbnail",
            "[...document.querySelectorAll('.card img')].some(i => i.complete && i.naturalWidth > 0)",
            Duration::from_secs(60),
        )
        .await;
    step(&mut browser, "thumbnail", thumbnail).await?;

    // Its agent's model calls show on the card, and so does the budget
    // stopping it.
    let upstream = flotilla_tests::llm_upstream::ScriptedUpstream::start().await;
    cluster
        .post_json(
            &addr,
            "/api/v1/llm/providers",
            json!({"name": "anth", "kind": "anthropic", "base_url": upstream.base_url(),
                   "key": "sk-board", "models": [{"name": "script-text", "price": {"input": 3_000_000, "output": 15_000_000}}]}),
        )
        .await?;
    let tasks: Value = cluster
        .http
        .get(format!("{base}/tasks"))
        .bearer_auth(&cluster.token)
        .send()
        .await?
        .json()
        .await?;
    let task_id = tasks["tasks"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let desktop_token = cluster.desktop_token(&task_id).await?;
    let call = || {
        cluster
            .http
            .post(format!(
                "http://{}/v1/messages",
                cluster.servers[0].desktop_addr
            ))
            .header("x-api-key", &desktop_token)
            .header("anthropic-version", "2023-06-01")
            .json(&json!({"model": "script-text", "max_tokens": 16,
                          "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    let answer = call().await?;
    let status = answer.status();
    assert_eq!(status, 200, "{}", answer.text().await?);
    // script-text: 12 in, 6 out.
    let usage = browser
        .wait_for(
            "the card's usage",
            "[...document.querySelectorAll('.card .usage')].some(u => u.textContent.startsWith('18 tokens'))",
            Duration::from_secs(10),
        )
        .await;
    step(&mut browser, "card-usage", usage).await?;
    cluster
        .http
        .put(format!("{base}/tasks/{task_id}/budget"))
        .bearer_auth(&cluster.token)
        .json(&json!({"max_tokens": 10}))
        .send()
        .await?
        .error_for_status()?;
    assert_eq!(call().await?.status(), 402);
    let refused = browser
        .wait_for(
            "the card saying why the agent stopped",
            "[...document.querySelectorAll('.card .refused')].some(r => r.textContent.includes('budget of task'))",
            Duration::from_secs(10),
        )
        .await;
    step(&mut browser, "card-refused", refused).await?;

    // Open the live view: the canvas shows the terminal (not blank).
    browser
        .eval("document.querySelector('.card img').click(); true")
        .await?;
    let shown = browser
        .wait_for(
            "a picture on the canvas",
            "(() => { const c = document.getElementById('screen'); \
               if (c.width !== 640) return false; \
               const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; \
               const seen = new Set(); \
               for (let i = 0; i < d.length; i += 4 * 97) seen.add(d[i] << 16 | d[i+1] << 8 | d[i+2]); \
               return seen.size > 1 || !seen.has(0); })()",
            Duration::from_secs(30),
        )
        .await;
    step(&mut browser, "live-view", shown).await?;
    eprintln!(
        "card moved to Planning → live picture on the canvas in {:?}",
        started.elapsed()
    );
    let mode = browser
        .eval("document.getElementById('desktop-state').textContent")
        .await?;
    eprintln!("live view: {mode}");

    // Take control and type a command with real key events.
    browser
        .eval("document.getElementById('take-control').click(); true")
        .await?;
    let control = browser
        .wait_for(
            "control",
            "document.getElementById('screen').classList.contains('control')",
            Duration::from_secs(10),
        )
        .await;
    step(&mut browser, "take-control", control).await?;
    browser
        .eval("document.getElementById('screen').focus(); true")
        .await?;
    for c in "touch /tmp/board".chars() {
        let (code, key, vk) = match c {
            ' ' => ("Space".to_owned(), " ".to_owned(), 32),
            '/' => ("Slash".to_owned(), "/".to_owned(), 191),
            c => (
                format!("Key{}", c.to_ascii_uppercase()),
                c.to_string(),
                c.to_ascii_uppercase() as u32,
            ),
        };
        browser.key(&code, &key, vk).await?;
    }
    browser.key("Enter", "Enter", 13).await?;
    let desktop: String = {
        let tasks: Value = cluster
            .http
            .get(format!("{base}/tasks"))
            .bearer_auth(&cluster.token)
            .send()
            .await?
            .json()
            .await?;
        tasks["tasks"][0]["desktop_id"].as_str().unwrap().to_owned()
    };
    let started = Instant::now();
    loop {
        let output = tokio::process::Command::new(flotilla_bin())
            .args(["desktop", "exec", &desktop, "--", "ls", "/tmp/board"])
            .env("FLOTILLA_ADDR", &addr)
            .env("FLOTILLA_TOKEN", &cluster.token)
            .output()
            .await?;
        if output.status.success() {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let failed: anyhow::Result<()> = Err(anyhow::anyhow!("the typed command never ran"));
            step(&mut browser, "typing", failed).await?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Back to the board; move the card to Done: the desktop goes away.
    browser
        .eval("document.getElementById('desktop-close').click(); true")
        .await?;
    browser
        .wait_for(
            "the board again",
            &card_in("planning", "watch the desktop"),
            Duration::from_secs(10),
        )
        .await?;
    browser.eval(&drop_on("done", "watch the desktop")).await?;
    let gone = browser
        .wait_for(
            "the desktop gone",
            &format!(
                "{} && document.querySelectorAll('.card img').length === 0",
                card_in("done", "watch the desktop")
            ),
            Duration::from_secs(30),
        )
        .await;
    step(&mut browser, "done", gone).await?;
    Ok(())
}
