//! Builders for tests of the state machine and of what reads it (the
//! fleet engine): commands with plausible fields, and a log that applies
//! them with consecutive indexes and checks the invariants after each.

use std::collections::BTreeMap;

use super::State;
use crate::types::{
    ClientRequest, ClientResponse, Column, Command, Desktop, DesktopReport, DesktopResources,
    DesktopState, NodeRegistration, NodeStatus, Placement, LOG_FORMAT_VERSION,
};

pub(crate) fn request(id: &str, command: Command) -> ClientRequest {
    ClientRequest {
        format: LOG_FORMAT_VERSION,
        request_id: id.to_owned(),
        issued_at_ms: 1_000,
        command,
    }
}

pub(crate) fn create(id: &str, column: Column) -> Command {
    Command::CreateTask {
        id: id.to_owned(),
        title: format!("task {id}"),
        description: String::new(),
        repository: None,
        column,
        resources: DesktopResources::default(),
    }
}

pub(crate) fn register(id: &str, cpu_millis: u64, slots: u32) -> Command {
    Command::RegisterNode {
        registration: NodeRegistration {
            id: id.to_owned(),
            name: format!("node-{id}"),
            labels: BTreeMap::new(),
            capacity: crate::types::NodeCapacity {
                cpu_millis,
                memory_bytes: 64 << 30,
                disk_bytes: 0,
                desktop_slots: slots,
            },
            reserved: Default::default(),
            gpus: Vec::new(),
            agent_version: "test".into(),
            address: String::new(),
        },
    }
}

pub(crate) fn status(id: &str, status: NodeStatus) -> Command {
    Command::SetNodeStatus {
        updates: vec![crate::types::NodeStatusUpdate {
            id: id.to_owned(),
            status,
        }],
    }
}

pub(crate) fn place(desktop_id: &str, node_id: &str) -> Command {
    Command::PlaceDesktops {
        placements: vec![Placement {
            desktop_id: desktop_id.to_owned(),
            node_id: node_id.to_owned(),
            gpu: None,
        }],
    }
}

pub(crate) fn report(node_id: &str, desktop: &Desktop, state: DesktopState) -> Command {
    Command::ReportDesktops {
        node_id: node_id.to_owned(),
        reports: vec![DesktopReport {
            desktop_id: desktop.id.clone(),
            generation: desktop.generation,
            state,
            reason: None,
        }],
    }
}

/// Applies commands with consecutive indexes, checking invariants.
pub(crate) struct Log {
    pub(crate) state: State,
    pub(crate) index: u64,
}

impl Log {
    pub(crate) fn new() -> Log {
        Log {
            state: State::default(),
            index: 0,
        }
    }

    pub(crate) fn apply(&mut self, command: Command) -> ClientResponse {
        self.index += 1;
        let (response, _) = self
            .state
            .apply(self.index, &request(&format!("r{}", self.index), command));
        self.state.verify_invariants().expect("invariants hold");
        response
    }

    pub(crate) fn desktop_of(&self, task: &str) -> Desktop {
        let id = self.state.task(task).unwrap().desktop_id.clone().unwrap();
        self.state.desktop(&id).unwrap().clone()
    }
}
