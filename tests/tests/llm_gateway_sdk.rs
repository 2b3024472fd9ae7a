//! The LLM gateway as the official SDKs see it: the SDK matrix
//! (`flotilla_tests::sdk_matrix`: every script in every mode, for Anthropic's
//! Messages and OpenAI's Chat Completions and Responses) run through the
//! desktop door with a desktop's token gives, case by case, the same result as
//! run straight against the provider (but for the usage chunk the gateway asks
//! chat streams for); the provider receives what the SDK sent (byte for byte,
//! or with only the usage option added); a model no provider serves is the
//! gateway's own 404, which the SDKs raise as `NotFoundError`; every call that
//! reached the provider is metered once, with what its answer said before it
//! ended or failed; and `GET /v1/models` lists the mapped models in both
//! formats.

use std::collections::BTreeMap;

use flotilla_tests::llm_upstream::{expected_usage, script, Ending, ScriptedUpstream};
use flotilla_tests::sdk_matrix::{
    check_all, run_cases, run_direct, Api, Hop, Target, COMPLETE, FAILING,
};
use flotilla_tests::{sdk, ServerFlags, TestCluster};
use serde_json::{json, Value};

/// The one model of the matrix that no provider serves.
const UNROUTED: &str = "no-such-model";

/// Every other model of the matrix: what both providers map.
fn routed() -> Vec<&'static str> {
    COMPLETE
        .iter()
        .chain(FAILING)
        .copied()
        .filter(|model| *model != UNROUTED)
        .collect()
}

fn provider(api: Api) -> &'static str {
    match api {
        Api::Anthropic => "anth",
        Api::Chat | Api::Responses => "oai",
    }
}

/// A one-server cluster whose providers `anth` (Anthropic) and `oai`
/// (OpenAI) serve every routed model from `upstream`, with a task in
/// planning; the task's id, and the matrix's target: the desktop door with
/// the task's desktop token.
async fn gateway(upstream: &ScriptedUpstream) -> anyhow::Result<(TestCluster, String, Target<'_>)> {
    let cluster = TestCluster::start(1, ServerFlags(vec![])).await?;
    let server = cluster.servers[0].addr.clone();
    let models: Vec<Value> = routed()
        .into_iter()
        .map(|model| json!({ "name": model }))
        .collect();
    let base = upstream.base_url();
    for (name, kind, base_url) in [
        ("anth", "anthropic", base.clone()),
        ("oai", "openai", format!("{base}/v1")),
    ] {
        cluster
            .post_json(
                &server,
                "/api/v1/llm/providers",
                json!({ "name": name, "kind": kind, "base_url": base_url,
                        "key": format!("sk-{name}-upstream"), "models": models }),
            )
            .await?;
    }
    let (task, token) = cluster.planning_task("sdk matrix").await?;
    let target = Target {
        base_url: format!("http://{}", cluster.servers[0].desktop_addr),
        api_key: token,
        upstream,
        hop: Hop::gateway(&routed()),
    };
    Ok((cluster, task, target))
}

/// The upstream's ids carry its request number (`req_scripted0012`), which
/// differs between two runs of one case: taken out.
fn without_request_numbers(text: &str) -> String {
    let mut pieces = text.split("scripted");
    let mut out = pieces.next().unwrap_or_default().to_owned();
    for piece in pieces {
        out.push_str("scripted");
        out.push_str(piece.trim_start_matches(|c: char| c.is_ascii_digit()));
    }
    out
}

/// How a gateway result should differ from the direct one, applied to it;
/// what is wrong if it does not differ so.
fn as_direct(api: Api, mut result: Value) -> Result<Value, String> {
    let case = result["case"].as_str().unwrap_or_default().to_owned();
    let (model, mode) = case.split_once(' ').unwrap_or_default();
    let complete = script(model).is_some_and(|script| script.ending == Ending::Complete);
    if api == Api::Chat && mode == "raw" && complete {
        // The gateway asks every chat stream for its usage: one more chunk.
        if result["usage_chunks"] != json!(1) {
            return Err(format!("usage chunks {}, not 1", result["usage_chunks"]));
        }
        result["usage_chunks"] = json!(0);
    }
    if model == UNROUTED {
        // The gateway's own 404, in the provider's format, with its own words.
        let message = result["message"].as_str().unwrap_or_default();
        if !message.starts_with("Error code: 404")
            || !message.contains("no provider serves model \"no-such-model\"")
        {
            return Err(format!("not the gateway's 404: {message}"));
        }
        result["message"] = Value::Null;
    }
    Ok(result)
}

fn comparable(mut result: Value) -> Value {
    if let Some(message) = result["message"].as_str() {
        result["message"] = json!(without_request_numbers(message));
    }
    result
}

/// Each case's difference between `direct` and `via` (the gateway).
fn differences(api: Api, direct: &[Value], via: &[Value]) -> Vec<String> {
    let mut found = Vec::new();
    for (direct, via) in direct.iter().zip(via) {
        let case = &direct["case"];
        let mut wanted = comparable(direct.clone());
        if case
            .as_str()
            .and_then(|case| case.split_once(' '))
            .map(|(model, _)| model)
            == Some(UNROUTED)
        {
            wanted["message"] = Value::Null;
        }
        match as_direct(api, via.clone()).map(comparable) {
            Ok(actual) if actual == wanted => {}
            Ok(actual) => found.push(format!(
                "{api:?} {case}:\n  direct:  {wanted}\n  gateway: {actual}"
            )),
            Err(problem) => found.push(format!("{api:?} {case}: {problem}\n  gateway: {via}")),
        }
    }
    found
}

/// Tokens the gateway should meter for one forwarded case: `[input, output,
/// cache_read, cache_write]`, input without cached input.
fn metered(api: Api, model: &str, mode: &str) -> [u64; 4] {
    // Statuses: an error body carries no usage.
    let (Some(script), Some(usage)) = (script(model), expected_usage(model)) else {
        return [0; 4];
    };
    match (script.ending, api) {
        (Ending::Complete, Api::Anthropic) => [
            usage.input,
            usage.output,
            usage.cache_read,
            usage.cache_write,
        ],
        // OpenAI counts cached input within the prompt; the gateway takes
        // it out, and reads no cache writes (the rest is input).
        (Ending::Complete, _) => [
            usage.prompt_total() - usage.cache_read,
            usage.output,
            usage.cache_read,
            0,
        ],
        // An Anthropic stream cut or failed after `message_start`: its
        // input and cache figures and `output_tokens: 1`.
        (_, Api::Anthropic) if mode != "whole" => {
            [usage.input, 1, usage.cache_read, usage.cache_write]
        }
        // A whole answer that failed (an error status, half a body) or an
        // OpenAI stream that failed before its usage: nothing seen.
        _ => [0; 4],
    }
}

/// Per `(provider, model)`: `[calls, input, output, cache_read, cache_write]`.
type Meter = BTreeMap<(String, String), [u64; 5]>;

fn add(meter: &mut Meter, provider: &str, model: &str, calls: u64, tokens: [u64; 4]) {
    let row = meter
        .entry((provider.to_owned(), model.to_owned()))
        .or_default();
    row[0] += calls;
    for (sum, count) in row[1..].iter_mut().zip(tokens) {
        *sum += count;
    }
}

/// The usage view's rows summed per `(provider, model)`.
fn recorded(usage: &Value) -> Meter {
    let mut meter = Meter::new();
    for row in usage["rows"].as_array().into_iter().flatten() {
        let count = |field: &str| row["usage"][field].as_u64().unwrap_or_default();
        add(
            &mut meter,
            row["provider"].as_str().unwrap_or_default(),
            row["model"].as_str().unwrap_or_default(),
            count("calls"),
            [
                count("input_tokens"),
                count("output_tokens"),
                count("cache_read_tokens"),
                count("cache_write_tokens"),
            ],
        );
    }
    meter
}

/// Lists the models with both SDKs: Anthropic's `(type, id)` and OpenAI's
/// `(object, id, owned_by)`, each sorted.
const MODELS: &str = r#"
import anthropic, json, openai, os
BASE, KEY = os.environ["BASE_URL"], os.environ["API_KEY"]
a = anthropic.Anthropic(base_url=BASE, api_key=KEY, max_retries=0)
o = openai.OpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0)
print(json.dumps({"anthropic": sorted([m.type, m.id] for m in a.models.list()),
                  "openai": sorted([m.object, m.id, m.owned_by] for m in o.models.list())}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdks_see_the_gateway_as_they_see_the_provider() -> anyhow::Result<()> {
    let upstream = ScriptedUpstream::start().await;
    let (cluster, task, target) = gateway(&upstream).await?;
    let mut found = Vec::new();
    let mut expected = Meter::new();
    for api in Api::ALL {
        let cases = api.cases();
        let (direct, via) = tokio::join!(run_direct(api), run_cases(api, &cases, &target));
        check_all(api, &direct);
        found.extend(differences(api, &direct, &via));
        for (model, mode) in cases.iter().filter(|(model, _)| *model != UNROUTED) {
            add(
                &mut expected,
                provider(api),
                model,
                1,
                metered(api, model, mode),
            );
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));

    // One call per case that reached the provider (the gateway's own 404s
    // are not calls), each metered once.
    let calls: u64 = expected.values().map(|row| row[0]).sum();
    let usage = cluster.settled_usage(&task, calls).await?;
    assert_eq!(recorded(&usage), expected, "{usage}");
    let totals = &usage["totals"];
    assert_eq!(totals["calls"], calls, "{usage}");
    for (index, field) in [
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
    ]
    .into_iter()
    .enumerate()
    {
        let sum: u64 = expected.values().map(|row| row[index + 1]).sum();
        assert_eq!(totals[field], sum, "{field}: {usage}");
    }
    assert_eq!(totals["cost_nanos"], 0, "no price, no cost: {usage}");

    let listed = sdk::run_python_async(MODELS.to_owned(), target.env()).await?;
    let listed: Value = serde_json::from_str(&listed)?;
    let mut models = routed();
    models.sort_unstable();
    let anthropic: Vec<Value> = models.iter().map(|id| json!(["model", id])).collect();
    let openai: Vec<Value> = models
        .iter()
        .map(|id| json!(["model", id, "oai"]))
        .collect();
    assert_eq!(
        listed,
        json!({ "anthropic": anthropic, "openai": openai }),
        "GET /v1/models"
    );
    Ok(())
}
