//! The bare repositories on this server's disk, `root/<project>/<repo>.git`. Every
//! server keeps its own copy; the copies agree because ref changes reach them only
//! through [`RepoStore::apply`] of updates the cluster committed, never through
//! `receive-pack` (which hands every update to the `proc-receive` hook instead).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::command::{Git, GitCommandError};
use crate::types::{NameError, ObjectId, RefName, RefUpdate, RepoId};

/// The program the `proc-receive` hook script execs, e.g. `flotilla git-hook proc-receive`.
#[derive(Debug, Clone)]
pub struct HookProgram {
    pub program: PathBuf,
    pub args: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub git: Git,
    /// The branch `HEAD` names in a new repository, e.g. `main`.
    pub default_branch: String,
    pub hook: HookProgram,
}

/// Where a server missing objects fetches them from: a peer's smart-HTTP URL for the
/// repository, and the `Authorization` header value that door wants. The header goes
/// to git through `GIT_CONFIG_*` variables, never on a command line other processes
/// could read.
#[derive(Debug, Clone)]
pub struct PeerRemote {
    pub url: String,
    pub authorization: Option<String>,
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("repository {repo} does not exist")]
    NotFound { repo: RepoId },
    #[error("repository {repo} already exists")]
    AlreadyExists { repo: RepoId },
    #[error("create the directory for repository {repo} at {path}")]
    CreateDir {
        repo: RepoId,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("initialise repository {repo}")]
    Init {
        repo: RepoId,
        #[source]
        source: GitCommandError,
    },
    #[error("set {key} in repository {repo}")]
    Configure {
        repo: RepoId,
        key: &'static str,
        #[source]
        source: GitCommandError,
    },
    #[error("install the proc-receive hook of repository {repo} at {path}")]
    InstallHook {
        repo: RepoId,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("default branch {branch:?} is not a valid branch name")]
    DefaultBranch {
        branch: String,
        #[source]
        source: NameError,
    },
    #[error("{step} in repository {repo}")]
    Git {
        repo: RepoId,
        step: &'static str,
        #[source]
        source: Box<GitCommandError>,
    },
    #[error("git printed something unexpected while {step} in repository {repo}: {line:?}")]
    UnexpectedOutput {
        repo: RepoId,
        step: &'static str,
        line: String,
    },
    #[error("repository {repo} lacks {} object(s) the update names, first {}; fetch them from a peer first", missing.len(), missing[0])]
    MissingObjects {
        repo: RepoId,
        missing: Vec<ObjectId>,
    },
    #[error("repository {repo} refused the ref transaction (a ref is not at the old value the update expects): {stderr}")]
    ApplyRejected { repo: RepoId, stderr: String },
    #[error("repository {repo} is corrupt: {report}")]
    FsckFailed { repo: RepoId, report: String },
    #[error("fetch {} object(s) for repository {repo} from {url}", count)]
    Fetch {
        repo: RepoId,
        url: String,
        count: usize,
        #[source]
        source: Box<GitCommandError>,
    },
}

/// The configuration every hosted repository gets, key by key.
///
/// - `core.fsync = committed,pack-metadata` with `core.fsyncMethod = fsync`: objects,
///   packs and their indexes are on disk before receive-pack reports the pack stored,
///   so a server that counted towards the f+1 copies of a pack still has it after a
///   power cut; refs are fsynced because the Raft state machine records that this copy
///   applied an update and must not find it missing after a crash. The index and
///   commit-graph are left out: a bare repository has no index, and the commit-graph
///   can be rebuilt.
/// - `receive.procReceiveRefs = refs/`: receive-pack updates no ref itself; every update
///   goes to the hook and so through the ledger.
/// - `receive.fsckObjects`, `transfer.fsckObjects`: a malformed object is refused at
///   the door instead of being replicated.
/// - `uploadpack.allowFilter`: partial clones (`--filter=blob:none`).
/// - `uploadpack.allowAnySHA1InWant`: a peer fetches a pushed pack by object id before
///   any ref names it (see [`RepoStore::fetch_objects_from`]); every reader of a
///   repository may read all of it, so this reveals nothing a ref will not.
/// - `gc.auto = 0`: no `git gc` racing a fetch of not-yet-referenced objects; the
///   control plane schedules maintenance.
const REPO_CONFIG: &[(&str, &str)] = &[
    ("core.fsync", "committed,pack-metadata"),
    ("core.fsyncMethod", "fsync"),
    ("receive.procReceiveRefs", "refs/"),
    ("receive.fsckObjects", "true"),
    ("transfer.fsckObjects", "true"),
    ("fetch.fsckObjects", "true"),
    ("uploadpack.allowFilter", "true"),
    ("uploadpack.allowAnySHA1InWant", "true"),
    ("receive.advertiseAtomic", "true"),
    ("gc.auto", "0"),
];

/// The bare repositories under one root directory.
#[derive(Debug)]
pub struct RepoStore {
    root: PathBuf,
    config: StoreConfig,
    /// Repositories this process has created or configured: `ensure` is
    /// called on every push and catch-up, and concurrent `git config` runs
    /// race for `config.lock` (a push refused for nothing), so each is
    /// prepared once per process (again after a restart, for upgrades).
    prepared: tokio::sync::Mutex<std::collections::HashSet<RepoId>>,
}

impl RepoStore {
    pub fn new(root: impl Into<PathBuf>, config: StoreConfig) -> Self {
        Self {
            root: root.into(),
            config,
            prepared: Default::default(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn git(&self) -> &Git {
        &self.config.git
    }

    pub fn repo_path(&self, repo: &RepoId) -> PathBuf {
        self.root
            .join(repo.project.as_str())
            .join(format!("{}.git", repo.repo))
    }

    pub fn exists(&self, repo: &RepoId) -> bool {
        self.repo_path(repo).join("HEAD").is_file()
    }

    /// The repository's path, or [`StoreError::NotFound`].
    pub fn existing_path(&self, repo: &RepoId) -> Result<PathBuf, StoreError> {
        if self.exists(repo) {
            Ok(self.repo_path(repo))
        } else {
            Err(StoreError::NotFound { repo: repo.clone() })
        }
    }

    /// Creates, configures and hooks a new bare repository; its `HEAD` names the
    /// configured default branch.
    pub async fn create(&self, repo: &RepoId) -> Result<(), StoreError> {
        if self.exists(repo) {
            return Err(StoreError::AlreadyExists { repo: repo.clone() });
        }
        self.ensure(repo).await
    }

    /// Creates the repository if it is missing and (re)applies the configuration and
    /// hook either way, so every server can run it when the cluster records a new
    /// repository, and again after an upgrade changed [`REPO_CONFIG`].
    pub async fn ensure(&self, repo: &RepoId) -> Result<(), StoreError> {
        let mut prepared = self.prepared.lock().await;
        if prepared.contains(repo) && self.exists(repo) {
            return Ok(());
        }
        let path = self.repo_path(repo);
        if !self.exists(repo) {
            let branch = &self.config.default_branch;
            RefName::branch(branch).map_err(|source| StoreError::DefaultBranch {
                branch: branch.clone(),
                source,
            })?;
            let parent = path
                .parent()
                .expect("a repository path has a project directory");
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|source| StoreError::CreateDir {
                    repo: repo.clone(),
                    path: parent.to_owned(),
                    source,
                })?;
            // Made whole beside its place, then renamed in: a push never
            // finds a repository without its configuration or its hook.
            let creating = parent.join(format!(
                ".{}.git.creating-{}",
                repo.repo,
                uuid::Uuid::new_v4().simple()
            ));
            let path_arg = creating.to_string_lossy();
            let initial_branch = format!("--initial-branch={branch}");
            // An empty template: no sample hooks, nothing but what this crate installs.
            self.git()
                .run(
                    None,
                    &[
                        "init",
                        "--quiet",
                        "--bare",
                        "--template=",
                        &initial_branch,
                        &path_arg,
                    ],
                    None,
                )
                .await
                .map_err(|source| StoreError::Init {
                    repo: repo.clone(),
                    source,
                })?;
            let made = async {
                self.configure_dir(repo, &creating).await?;
                self.install_hook_dir(repo, &creating).await?;
                tokio::fs::rename(&creating, &path)
                    .await
                    .map_err(|source| StoreError::CreateDir {
                        repo: repo.clone(),
                        path: path.clone(),
                        source,
                    })
            }
            .await;
            if made.is_err() {
                let _ = tokio::fs::remove_dir_all(&creating).await;
            }
            made?;
        } else {
            // Again once per process: an upgrade may have changed either.
            self.configure(repo).await?;
            self.install_hook(repo).await?;
        }
        prepared.insert(repo.clone());
        Ok(())
    }

    /// Writes [`REPO_CONFIG`] into the repository's config.
    pub async fn configure(&self, repo: &RepoId) -> Result<(), StoreError> {
        let path = self.existing_path(repo)?;
        self.configure_dir(repo, &path).await
    }

    async fn configure_dir(&self, repo: &RepoId, path: &Path) -> Result<(), StoreError> {
        for (key, value) in REPO_CONFIG {
            self.git()
                .run(Some(path), &["config", key, value], None)
                .await
                .map_err(|source| StoreError::Configure {
                    repo: repo.clone(),
                    key,
                    source,
                })?;
        }
        Ok(())
    }

    /// Writes `hooks/proc-receive`, a shell script that execs the configured hook
    /// program (each word single-quoted), atomically through a rename.
    pub async fn install_hook(&self, repo: &RepoId) -> Result<(), StoreError> {
        let path = self.existing_path(repo)?;
        self.install_hook_dir(repo, &path).await
    }

    async fn install_hook_dir(&self, repo: &RepoId, path: &Path) -> Result<(), StoreError> {
        use std::os::unix::fs::PermissionsExt;
        let hooks = path.join("hooks");
        let hook_path = hooks.join("proc-receive");
        let temporary = hooks.join("proc-receive.tmp");
        let failed = |source| StoreError::InstallHook {
            repo: repo.clone(),
            path: hook_path.clone(),
            source,
        };
        let mut words = vec![shell_quote(&self.config.hook.program.to_string_lossy())];
        words.extend(self.config.hook.args.iter().map(|arg| shell_quote(arg)));
        let script = format!(
            "#!/bin/sh\n# Installed by flotilla-git: every ref update of this repository goes\n\
             # through the cluster's ledger; receive-pack writes no ref itself.\nexec {}\n",
            words.join(" ")
        );
        tokio::fs::create_dir_all(&hooks).await.map_err(failed)?;
        tokio::fs::write(&temporary, script).await.map_err(failed)?;
        tokio::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o755))
            .await
            .map_err(failed)?;
        tokio::fs::rename(&temporary, &hook_path)
            .await
            .map_err(failed)
    }

    /// The branch `HEAD` names, e.g. `refs/heads/main`.
    pub async fn default_branch(&self, repo: &RepoId) -> Result<RefName, StoreError> {
        let stdout = self
            .run(repo, "read HEAD", &["symbolic-ref", "HEAD"], None)
            .await?;
        let line = String::from_utf8_lossy(&stdout).trim().to_owned();
        RefName::new(line.clone()).map_err(|_| StoreError::UnexpectedOutput {
            repo: repo.clone(),
            step: "reading HEAD",
            line,
        })
    }

    /// Every ref and the object it points at (`git for-each-ref`).
    pub async fn list_refs(
        &self,
        repo: &RepoId,
    ) -> Result<BTreeMap<RefName, ObjectId>, StoreError> {
        let stdout = self
            .run(
                repo,
                "list refs",
                &["for-each-ref", "--format=%(objectname) %(refname)"],
                None,
            )
            .await?;
        let mut refs = BTreeMap::new();
        for line in String::from_utf8_lossy(&stdout).lines() {
            let unexpected = || StoreError::UnexpectedOutput {
                repo: repo.clone(),
                step: "listing refs",
                line: line.to_owned(),
            };
            let (id, name) = line.split_once(' ').ok_or_else(unexpected)?;
            let id = ObjectId::new(id).map_err(|_| unexpected())?;
            let name = RefName::new(name).map_err(|_| unexpected())?;
            refs.insert(name, id);
        }
        Ok(refs)
    }

    /// The object `name` points at, if the ref exists.
    pub async fn resolve_ref(
        &self,
        repo: &RepoId,
        name: &RefName,
    ) -> Result<Option<ObjectId>, StoreError> {
        Ok(self.list_refs(repo).await?.remove(name))
    }

    /// Which of `ids` this copy lacks (`git cat-file --batch-check`).
    pub async fn missing_objects(
        &self,
        repo: &RepoId,
        ids: &[ObjectId],
    ) -> Result<Vec<ObjectId>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let input: String = ids.iter().map(|id| format!("{id}\n")).collect();
        let stdout = self
            .run(
                repo,
                "check objects",
                &["cat-file", "--batch-check=%(objectname)"],
                Some(input.as_bytes()),
            )
            .await?;
        // One line per input line, in order: the id itself or `<id> missing`.
        let output = String::from_utf8_lossy(&stdout);
        Ok(ids
            .iter()
            .zip(output.lines())
            .filter(|(_, line)| line.ends_with(" missing"))
            .map(|(id, _)| id.clone())
            .collect())
    }

    /// The hook point before a ref update is proposed: every object it names is on this
    /// server's disk (fsynced by git, see [`REPO_CONFIG`]). Replicating them to f more
    /// servers is the ledger's job; see [`crate::ledger::RefLedger`].
    pub async fn objects_durable(&self, repo: &RepoId, ids: &[ObjectId]) -> Result<(), StoreError> {
        let missing = self.missing_objects(repo, ids).await?;
        if missing.is_empty() {
            Ok(())
        } else {
            Err(StoreError::MissingObjects {
                repo: repo.clone(),
                missing,
            })
        }
    }

    /// Whether `ancestor` is reachable from `descendant` (a fast-forward).
    pub async fn is_ancestor(
        &self,
        repo: &RepoId,
        ancestor: &ObjectId,
        descendant: &ObjectId,
    ) -> Result<bool, StoreError> {
        let path = self.existing_path(repo)?;
        let args = [
            "merge-base",
            "--is-ancestor",
            ancestor.as_str(),
            descendant.as_str(),
        ];
        let output = self
            .git()
            .output(Some(&path), &args, None)
            .await
            .map_err(|source| self.git_error(repo, "check ancestry", source))?;
        match output.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(self.git_error(
                repo,
                "check ancestry",
                output
                    .success(&args)
                    .expect_err("a non-0, non-1 exit is a failure"),
            )),
        }
    }

    /// Applies updates the cluster committed, as one `git update-ref --stdin`
    /// transaction that checks every ref's old value (all or nothing).
    ///
    /// Idempotent: an update whose ref already points at its new value is skipped, so
    /// replaying the Raft log after a crash (the state machine's applied index can lag
    /// what reached git) is harmless. Fails with [`StoreError::MissingObjects`] when a
    /// new value is not here yet: fetch it with [`RepoStore::fetch_objects_from`].
    pub async fn apply(&self, repo: &RepoId, updates: &[RefUpdate]) -> Result<(), StoreError> {
        let path = self.existing_path(repo)?;
        let current = self.list_refs(repo).await?;
        let pending: Vec<&RefUpdate> = updates
            .iter()
            .filter(|update| current.get(&update.name) != update.new.as_ref())
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        let new_ids: Vec<ObjectId> = pending.iter().filter_map(|u| u.new.clone()).collect();
        self.objects_durable(repo, &new_ids).await?;
        let mut input = String::from("start\n");
        for update in &pending {
            let line = match (&update.old, &update.new) {
                (old, Some(new)) => format!(
                    "update {} {new} {}\n",
                    update.name,
                    old.as_ref()
                        .map_or_else(|| ObjectId::null_hex(Some(new)), ToString::to_string)
                ),
                (Some(old), None) => format!("delete {} {old}\n", update.name),
                // Deleting a ref that must not exist: nothing to do.
                (None, None) => continue,
            };
            input.push_str(&line);
        }
        input.push_str("prepare\ncommit\n");
        let args = ["update-ref", "--stdin"];
        let output = self
            .git()
            .output(Some(&path), &args, Some(input.as_bytes()))
            .await
            .map_err(|source| self.git_error(repo, "apply ref updates", source))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(StoreError::ApplyRejected {
                repo: repo.clone(),
                stderr: output.stderr,
            })
        }
    }

    /// `git fsck --strict`: fails when an object is corrupt or a ref points at a missing
    /// one. Unreachable objects (a refused push's pack) are not corruption.
    pub async fn fsck(&self, repo: &RepoId) -> Result<(), StoreError> {
        let path = self.existing_path(repo)?;
        let args = ["fsck", "--strict", "--no-progress", "--no-dangling"];
        let output = self
            .git()
            .output(Some(&path), &args, None)
            .await
            .map_err(|source| self.git_error(repo, "fsck", source))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(StoreError::FsckFailed {
                repo: repo.clone(),
                report: format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    output.stderr
                ),
            })
        }
    }

    /// Fetches the objects `ids` (and everything they reach) from a peer that has them,
    /// writing no ref and no `FETCH_HEAD`; then checks they arrived.
    pub async fn fetch_objects_from(
        &self,
        repo: &RepoId,
        peer: &PeerRemote,
        ids: &[ObjectId],
    ) -> Result<(), StoreError> {
        let path = self.existing_path(repo)?;
        let missing = self.missing_objects(repo, ids).await?;
        if missing.is_empty() {
            return Ok(());
        }
        let mut command = self.git().command(Some(&path));
        if let Some(authorization) = &peer.authorization {
            command
                .env("GIT_CONFIG_COUNT", "1")
                .env("GIT_CONFIG_KEY_0", "http.extraHeader")
                .env(
                    "GIT_CONFIG_VALUE_0",
                    format!("Authorization: {authorization}"),
                );
        }
        let mut args = vec![
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--no-recurse-submodules",
            "--",
            peer.url.as_str(),
        ];
        args.extend(missing.iter().map(ObjectId::as_str));
        let fetch_failed = |source| StoreError::Fetch {
            repo: repo.clone(),
            url: peer.url.clone(),
            count: missing.len(),
            source: Box::new(source),
        };
        self.git()
            .output_with(command, &args, None)
            .await
            .map_err(fetch_failed)?
            .success(&args)
            .map_err(fetch_failed)?;
        self.objects_durable(repo, ids).await
    }

    async fn run(
        &self,
        repo: &RepoId,
        step: &'static str,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<Vec<u8>, StoreError> {
        let path = self.existing_path(repo)?;
        self.git()
            .run(Some(&path), args, stdin)
            .await
            .map_err(|source| self.git_error(repo, step, source))
    }

    fn git_error(&self, repo: &RepoId, step: &'static str, source: GitCommandError) -> StoreError {
        StoreError::Git {
            repo: repo.clone(),
            step,
            source: Box::new(source),
        }
    }
}

/// `word` single-quoted for `/bin/sh`.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn shell_quote_survives_quotes_and_spaces() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
