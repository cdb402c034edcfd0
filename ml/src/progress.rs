//! Lines the worker prints for the engine: progress and, last, the metrics.

use relabel_tasks::protocol::WorkerLine;

fn emit(line: &WorkerLine) {
    println!(
        "{}",
        serde_json::to_string(line).expect("worker lines serialize")
    );
}

pub fn len(n: u64) {
    emit(&WorkerLine::Progress {
        len: Some(n),
        inc: None,
        msg: None,
    });
}

pub fn step(msg: &str) {
    emit(&WorkerLine::Progress {
        len: None,
        inc: Some(1),
        msg: Some(msg.to_string()),
    });
}

pub fn metrics(m: serde_json::Map<String, serde_json::Value>) {
    emit(&WorkerLine::Metrics(m));
}
