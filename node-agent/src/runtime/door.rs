//! What a desktop gets to reach the servers' desktop door: its token as a
//! git credential (a helper in the generated `/etc/gitconfig`, answering
//! only for the door's URLs), a commit identity, and where its task's
//! repository is (`FLOTILLA_GIT_REMOTE`), and the LLM gateway as each
//! agent's SDK finds its provider (`ANTHROPIC_BASE_URL`/`ANTHROPIC_AUTH_TOKEN`,
//! `OPENAI_BASE_URL`/`OPENAI_API_KEY`: the door and the desktop token, never
//! a provider's key). Pure: the spec and the endpoints
//! in, the file and the variables out. What the control plane sent is
//! checked before it is written into a config file.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::DesktopSpec;

/// `/etc/gitconfig` and the variables for a desktop, or `None` when it has
/// no token or no door to reach.
pub(super) fn door_config(
    spec: &DesktopSpec,
    endpoints: &[SocketAddr],
) -> Option<(String, BTreeMap<String, String>)> {
    if spec.token.is_empty() || endpoints.is_empty() {
        return None;
    }
    if !spec.token.bytes().all(token_byte) || !valid_name(&spec.task_id) {
        tracing::warn!(desktop = %spec.desktop_id, "the desktop token or task id has characters a credential cannot hold; the desktop gets no git credential");
        return None;
    }
    let mut config = String::from(
        "# Written by the node agent: this desktop's credential for the servers' desktop door.\n",
    );
    for endpoint in endpoints {
        config.push_str(&format!(
            "[credential \"http://{endpoint}\"]\n\thelper =\n\thelper = \"!f() {{ test \\\"$1\\\" = get || exit 0; echo username=desktop; echo password={}; }}; f\"\n",
            spec.token
        ));
    }
    config.push_str(&format!(
        "[user]\n\tname = Flotilla task {task}\n\temail = {task}@desktops.flotilla.invalid\n[init]\n\tdefaultBranch = main\n",
        task = spec.task_id
    ));
    let mut env = BTreeMap::new();
    // Wherever this git was built to look (a /usr/local build looks in
    // /usr/local/etc), it reads the generated file.
    env.insert("GIT_CONFIG_SYSTEM".to_owned(), "/etc/gitconfig".to_owned());
    env.insert(
        "FLOTILLA_GIT_URL".to_owned(),
        format!("http://{}/git", endpoints[0]),
    );
    let gateway = format!("http://{}", endpoints[0]);
    env.insert("ANTHROPIC_BASE_URL".to_owned(), gateway.clone());
    env.insert("ANTHROPIC_AUTH_TOKEN".to_owned(), spec.token.clone());
    env.insert("OPENAI_BASE_URL".to_owned(), format!("{gateway}/v1"));
    env.insert("OPENAI_API_KEY".to_owned(), spec.token.clone());
    if let Some((project, repo)) = spec.repository.split_once('/') {
        if valid_name(project) && valid_name(repo) {
            env.insert("FLOTILLA_REPOSITORY".to_owned(), spec.repository.clone());
            env.insert(
                "FLOTILLA_GIT_REMOTE".to_owned(),
                format!("http://{}/git/{project}/{repo}", endpoints[0]),
            );
            env.insert(
                "FLOTILLA_GIT_BRANCH".to_owned(),
                format!("flotilla/{}", spec.task_id),
            );
        }
    }
    Some((config, env))
}

fn token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b'.')
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Profile;
    use crate::sandbox::net::Egress;

    fn spec(token: &str, repository: &str) -> DesktopSpec {
        DesktopSpec {
            desktop_id: "d1".to_owned(),
            task_id: "t1".to_owned(),
            generation: 3,
            cpu_millis: 250,
            memory_bytes: 1 << 30,
            gpu_memory_bytes: 0,
            gpu: None,
            egress: Egress::default(),
            profile: Profile::default(),
            token: token.to_owned(),
            repository: repository.to_owned(),
        }
    }

    #[test]
    fn a_token_becomes_a_helper_for_the_door_only() {
        let door: SocketAddr = "10.88.0.1:7101".parse().expect("address");
        let (config, env) = door_config(&spec("flo_desk_d1.3.ab", "p/r"), &[door]).expect("config");
        assert!(config.contains("[credential \"http://10.88.0.1:7101\"]"));
        assert!(config.contains("echo password=flo_desk_d1.3.ab;"));
        assert_eq!(env["FLOTILLA_GIT_REMOTE"], "http://10.88.0.1:7101/git/p/r");
        assert_eq!(env["FLOTILLA_GIT_BRANCH"], "flotilla/t1");
        assert_eq!(env["ANTHROPIC_BASE_URL"], "http://10.88.0.1:7101");
        assert_eq!(env["OPENAI_BASE_URL"], "http://10.88.0.1:7101/v1");
        assert_eq!(env["OPENAI_API_KEY"], "flo_desk_d1.3.ab");
        assert_eq!(env["ANTHROPIC_AUTH_TOKEN"], "flo_desk_d1.3.ab");
        let (_, env) = door_config(&spec("tok", ""), &[door]).expect("config");
        assert!(!env.contains_key("FLOTILLA_GIT_REMOTE"));
    }

    #[test]
    fn nothing_without_a_token_a_door_or_with_odd_bytes() {
        let door: SocketAddr = "10.88.0.1:7101".parse().expect("address");
        assert!(door_config(&spec("", "p/r"), &[door]).is_none());
        assert!(door_config(&spec("tok", "p/r"), &[]).is_none());
        assert!(door_config(&spec("to\"k; rm -rf /", "p/r"), &[door]).is_none());
        let (_, env) = door_config(&spec("tok", "p/../r"), &[door]).expect("config");
        assert!(!env.contains_key("FLOTILLA_GIT_REMOTE"));
    }
}
