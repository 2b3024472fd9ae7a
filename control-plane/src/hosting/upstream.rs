//! Imported repositories and their mirrors. `import` copies every branch and
//! tag of an upstream (http(s), `git://`, `file://`) into a scratch bare
//! repository, then into this server's copy by object id, has f peers copy
//! the objects, and commits the refs through Raft from nothing, as a push.
//! The mirror (the leader's loop) pushes the default branch back whenever
//! it moves (merges land there), retrying with a back-off; each outcome is a
//! `RecordMirror` so every server, the API and the board can tell when the
//! mirror lags or fails. The upstream credential is sealed in the state
//! (`crate::seal`), opened only here, and handed to git as an HTTP header
//! through its environment: never in a URL, an argument, a log line or
//! anything a desktop can reach.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use flotilla_git::{ObjectId, PeerRemote, RefName, RepoId};

use super::ledger::RaftLedger;
use super::sync::GitSync;
use crate::control::{Consistency, ControlPlane};
use crate::error::ApiError;
use crate::types::{Command, RefChange, Repo};

/// How often the mirror looks for moved branches.
const MIRROR_TICK: Duration = Duration::from_millis(500);
/// Longest wait between two tries of a failing mirror.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Where imports may reach, if set (comma-separated hosts, `file` for
/// `file://`).
pub const UPSTREAM_HOSTS_ENV: &str = "FLOTILLA_UPSTREAM_HOSTS";

/// The transports an upstream may use (no `ext::`, no ssh agents here).
const ALLOWED_PROTOCOLS: &str = "http:https:git:file";

/// Why a mirror push did not happen; the text is what the API shows.
#[derive(Debug, thiserror::Error)]
enum MirrorError {
    #[error("the upstream credential does not open: {0}")]
    Credential(#[from] crate::seal::SealError),
    #[error("bring this server's copy up to date: {0}")]
    Sync(#[from] super::sync::SyncError),
    #[error(transparent)]
    Name(#[from] flotilla_git::NameError),
    #[error("git push: {0}")]
    Push(String),
}

pub struct Upstreams {
    sync: Arc<GitSync>,
    ledger: Arc<RaftLedger>,
    scratch: PathBuf,
}

/// Checks an upstream URL: a scheme we speak, no credentials inside.
pub fn check_upstream_url(url: &str) -> Result<(), ApiError> {
    let bad = |why: &str| ApiError::bad_request("invalid_url", format!("upstream {url:?}: {why}"));
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(bad("not a URL: use http(s)://, git:// or file://"));
    };
    if !matches!(scheme, "http" | "https" | "git" | "file") {
        return Err(bad("only http, https, git and file URLs are imported"));
    }
    if url.len() > 2048 || url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad("too long, or has spaces or control characters"));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Err(bad(
            "credentials do not belong in the URL: pass the token separately (--token-file)",
        ));
    }
    if scheme != "file" && authority.is_empty() {
        return Err(bad("no host"));
    }
    // `FLOTILLA_UPSTREAM_HOSTS=a.example,b.example[,file]` limits where
    // imports may reach (a server on an internal network should not fetch
    // from wherever an API caller names); unset: anywhere.
    if let Ok(allowed) = std::env::var(UPSTREAM_HOSTS_ENV) {
        let host = if scheme == "file" {
            "file"
        } else {
            let without_port = match authority.rsplit_once(':') {
                Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
                _ => authority,
            };
            without_port.trim_start_matches('[').trim_end_matches(']')
        };
        if !allowed
            .split(',')
            .any(|entry| entry.trim().eq_ignore_ascii_case(host))
        {
            return Err(bad(&format!(
                "{host} is not among the hosts this server imports from ({UPSTREAM_HOSTS_ENV})"
            )));
        }
    }
    Ok(())
}

/// `text` with the secret replaced, for messages that may quote git.
fn redact(text: &str, secret: Option<&str>) -> String {
    match secret {
        Some(secret) if !secret.is_empty() => text.replace(secret, "<redacted>"),
        _ => text.to_owned(),
    }
}

impl Upstreams {
    pub fn new(sync: Arc<GitSync>, ledger: Arc<RaftLedger>, scratch: PathBuf) -> Upstreams {
        Upstreams {
            sync,
            ledger,
            scratch,
        }
    }

    fn control(&self) -> &Arc<ControlPlane> {
        self.sync.control()
    }

    /// A git command against an upstream, its credential in the environment.
    fn upstream_git(
        &self,
        git_dir: &std::path::Path,
        credential: Option<&str>,
    ) -> tokio::process::Command {
        let mut command = self.sync.store().git().command(Some(git_dir));
        command.env("GIT_ALLOW_PROTOCOL", ALLOWED_PROTOCOLS);
        let mut config = vec![("credential.helper".to_owned(), String::new())];
        if let Some(token) = credential {
            let basic =
                base64::engine::general_purpose::STANDARD.encode(format!("flotilla:{token}"));
            config.push((
                "http.extraHeader".to_owned(),
                format!("Authorization: Basic {basic}"),
            ));
        }
        command.env("GIT_CONFIG_COUNT", config.len().to_string());
        for (n, (key, value)) in config.into_iter().enumerate() {
            command.env(format!("GIT_CONFIG_KEY_{n}"), key);
            command.env(format!("GIT_CONFIG_VALUE_{n}"), value);
        }
        command
    }

    /// Fills the new, empty `project/name` from `url`: every branch and tag,
    /// committed only once f peers hold the objects. Answers the repository.
    pub async fn import(
        &self,
        project: &str,
        name: &str,
        url: &str,
        credential: Option<&str>,
    ) -> Result<Repo, ApiError> {
        let id = RepoId::new(project, name)
            .map_err(|e| ApiError::bad_request("invalid_name", e.to_string()))?;
        let store = self.sync.store();
        self.sync
            .converge(project, name)
            .await
            .map_err(|error| ApiError::unavailable(error.to_string()))?;
        let scratch = self.scratch.join(format!("{}.git", uuid::Uuid::new_v4()));
        let fail = |step: &str, detail: String| {
            ApiError::new(
                crate::error::ErrorKind::BadGateway,
                "upstream_failed",
                format!("{step} {url}: {}", redact(&detail, credential)),
            )
        };
        std::fs::create_dir_all(&self.scratch)
            .map_err(|e| ApiError::internal(format!("scratch directory: {e}")))?;
        let git = store.git();
        let scratch_str = scratch.display().to_string();
        let init = git
            .output(None, &["init", "--quiet", "--bare", &scratch_str], None)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        if !init.status.success() {
            return Err(ApiError::internal(format!("git init: {}", init.stderr)));
        }
        let result = async {
            let args = [
                "fetch",
                "--quiet",
                "--no-write-fetch-head",
                "--no-recurse-submodules",
                "--",
                url,
                "+refs/heads/*:refs/heads/*",
                "+refs/tags/*:refs/tags/*",
            ];
            let fetched = git
                .output_with(self.upstream_git(&scratch, credential), &args, None)
                .await
                .map_err(|e| fail("fetch", e.to_string()))?;
            if !fetched.status.success() {
                return Err(fail("fetch", fetched.stderr));
            }
            let listed = git
                .run(
                    Some(&scratch),
                    &["for-each-ref", "--format=%(objectname) %(refname)"],
                    None,
                )
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
            let mut refs = BTreeMap::new();
            for line in String::from_utf8_lossy(&listed).lines() {
                let Some((object, name)) = line.split_once(' ') else {
                    continue;
                };
                // Only what our own ref rules would take.
                if let (Ok(object), Ok(name)) = (ObjectId::new(object), RefName::new(name)) {
                    refs.insert(name, object);
                }
            }
            let objects: Vec<ObjectId> = refs.values().cloned().collect();
            let local = PeerRemote {
                url: scratch_str.clone(),
                authorization: None,
            };
            store
                .fetch_objects_from(&id, &local, &objects)
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
            Ok((refs, objects))
        }
        .await;
        let _ = std::fs::remove_dir_all(&scratch);
        let (refs, objects) = result?;
        self.ledger
            .replicate(&id, &objects)
            .await
            .map_err(|error| ApiError::unavailable(error.to_string()))?;
        let control = self.control();
        let changes: Vec<RefChange> = refs
            .iter()
            .map(|(name, object)| RefChange {
                name: name.as_str().to_owned(),
                old: None,
                new: Some(object.as_str().to_owned()),
            })
            .collect();
        let default_branch = control
            .state
            .with_state(|state| {
                state
                    .repo(project, name)
                    .map(|repo| repo.default_branch.clone())
            })
            .unwrap_or_else(|| "main".to_owned());
        let pushed = refs
            .iter()
            .find(|(name, _)| name.as_str() == format!("refs/heads/{default_branch}"))
            .map(|(_, object)| object.as_str().to_owned());
        if !changes.is_empty() {
            let command = Command::UpdateRefs {
                project: project.to_owned(),
                repo: name.to_owned(),
                changes,
            };
            control
                .write(control.request(command, None))
                .await?
                .outcome
                .map_err(ApiError::from)?;
        }
        // The upstream is where the mirror starts from.
        let record = Command::RecordMirror {
            project: project.to_owned(),
            repo: name.to_owned(),
            pushed,
            error: None,
        };
        let repo = match control.write(control.request(record, None)).await?.outcome {
            Ok(crate::types::Applied::Repo { repo }) => repo,
            Ok(other) => return Err(ApiError::internal(format!("unexpected answer {other:?}"))),
            Err(error) => return Err(error.into()),
        };
        control.read_barrier(Consistency::Linearizable).await?;
        self.sync
            .converge(project, name)
            .await
            .map_err(|error| ApiError::unavailable(error.to_string()))?;
        Ok(repo)
    }

    /// Pushes `repo`'s default branch to its upstream; `Err` says why not.
    async fn push(&self, repo: &Repo, commit: &str) -> Result<(), MirrorError> {
        let Some(upstream) = &repo.upstream else {
            return Ok(());
        };
        let sealed = self.control().state.with_state(|state| {
            state
                .upstream_credential(&repo.project, &repo.name)
                .map(str::to_owned)
        });
        let credential = match sealed {
            Some(sealed) => Some(crate::seal::open(
                self.control().cluster_secret(),
                &Repo::key(&repo.project, &repo.name),
                &sealed,
            )?),
            None => None,
        };
        self.sync.converge(&repo.project, &repo.name).await?;
        let id = RepoId::new(&repo.project, &repo.name)?;
        let path = self.sync.store().repo_path(&id);
        let refspec = format!("{commit}:refs/heads/{}", repo.default_branch);
        let args = [
            "push",
            "--quiet",
            "--porcelain",
            "--",
            upstream.url.as_str(),
            refspec.as_str(),
        ];
        let output = self
            .sync
            .store()
            .git()
            .output_with(self.upstream_git(&path, credential.as_deref()), &args, None)
            .await
            .map_err(|e| MirrorError::Push(redact(&e.to_string(), credential.as_deref())))?;
        if output.status.success() {
            return Ok(());
        }
        let said = format!(
            "{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            output.stderr
        );
        Err(MirrorError::Push(redact(
            said.trim(),
            credential.as_deref(),
        )))
    }

    /// The leader's mirror: pushes each imported repository's default
    /// branch when it moves, records the outcome, backs off on failure.
    pub async fn run(self: Arc<Self>) {
        let mut backoff: HashMap<String, (Instant, Duration)> = HashMap::new();
        loop {
            tokio::time::sleep(MIRROR_TICK).await;
            let control = self.control().clone();
            if !control.is_leader() {
                continue;
            }
            let due: Vec<(Repo, String)> = control.state.with_state(|state| {
                state
                    .all_repos()
                    .filter_map(|repo| {
                        let upstream = repo.upstream.as_ref()?;
                        let head = repo
                            .refs
                            .get(&format!("refs/heads/{}", repo.default_branch))?;
                        (upstream.pushed.as_ref() != Some(head))
                            .then(|| (repo.clone(), head.clone()))
                    })
                    .collect()
            });
            for (repo, head) in due {
                let key = Repo::key(&repo.project, &repo.name);
                if backoff
                    .get(&key)
                    .is_some_and(|(at, _)| Instant::now() < *at)
                {
                    continue;
                }
                let outcome = self.push(&repo, &head).await;
                let (pushed, error) = match &outcome {
                    Ok(()) => {
                        backoff.remove(&key);
                        (Some(head.clone()), None)
                    }
                    Err(error) => {
                        let wait = backoff
                            .get(&key)
                            .map_or(Duration::from_secs(1), |(_, wait)| {
                                (*wait * 2).min(MAX_BACKOFF)
                            });
                        backoff.insert(key.clone(), (Instant::now() + wait, wait));
                        tracing::warn!(repo = %key, %error, retry_in = ?wait, "mirror push failed");
                        (
                            repo.upstream.as_ref().and_then(|u| u.pushed.clone()),
                            Some(error.to_string()),
                        )
                    }
                };
                let unchanged = repo
                    .upstream
                    .as_ref()
                    .is_some_and(|u| u.pushed == pushed && u.error == error);
                if unchanged {
                    continue;
                }
                let command = Command::RecordMirror {
                    project: repo.project.clone(),
                    repo: repo.name.clone(),
                    pushed,
                    error,
                };
                if let Err(error) = control.write(control.request(command, None)).await {
                    tracing::warn!(repo = %key, %error, "cannot record the mirror's outcome");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls_are_ours_to_speak_and_hold_no_credentials() {
        for good in [
            "https://github.com/o/r.git",
            "http://127.0.0.1:8080/git/r",
            "git://host/r",
            "file:///srv/r.git",
        ] {
            assert!(check_upstream_url(good).is_ok(), "{good}");
        }
        for bad in [
            "github.com/o/r",
            "ssh://host/r",
            "ext::sh -c touch% /tmp/x",
            "https://user:token@github.com/o/r",
            "https:///r",
            "http://host/a b",
        ] {
            assert!(check_upstream_url(bad).is_err(), "{bad}");
        }
        assert_eq!(redact("x tok y", Some("tok")), "x <redacted> y");
    }
}
