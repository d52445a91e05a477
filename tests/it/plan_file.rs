//! Plan files: save/load round trip, replay on resnet20 giving byte-identical models (one and
//! two steps), clear errors for plans that do not fit the model or are not plans, and the
//! structural fingerprint.

use crate::common;

use std::path::Path;

use common::shared_dir;
use lopper::analysis::importance::l1_scores;
use lopper::analysis::infer_shapes;
use lopper::error::Error;
use lopper::ir::Model;
use lopper::passes::remove_channels;
use lopper::plan::{fingerprint, plan_ratio, PlanFile, PlanMeta, PLAN_FORMAT};
use lopper::prune::analyse;

fn model_path(name: &str) -> std::path::PathBuf {
    shared_dir().join("models/pretrained").join(name)
}

fn meta() -> PlanMeta {
    let mut m = PlanMeta {
        criterion: "l1".into(),
        ..Default::default()
    };
    m.options.insert("ratio".into(), serde_json::json!(0.3));
    m.options.insert("reduce".into(), serde_json::json!("sum"));
    m
}

/// Prunes `model` in `rounds` rounds of ratio 0.3 (L1), recording each round in a plan.
fn prune_recording(model: &mut Model, rounds: usize) -> (PlanFile, Vec<Vec<usize>>) {
    let mut plan = PlanFile::new(fingerprint(model), meta());
    let mut chosen = Vec::new();
    for _ in 0..rounds {
        let groups = analyse(model).unwrap();
        let scores = l1_scores(model, &groups);
        let classes = plan_ratio(&groups, &scores, 0.3).unwrap();
        assert!(!classes.is_empty());
        plan.push_step(&groups, &classes, Some(&scores)).unwrap();
        let shapes = infer_shapes(model).unwrap();
        remove_channels(model, &groups, &shapes, &classes).unwrap();
        chosen.push(classes);
    }
    (plan, chosen)
}

/// Replays every step of `plan` on `model`; returns the classes of each step.
fn replay(plan: &PlanFile, model: &mut Model) -> Vec<Vec<usize>> {
    plan.check_model(model).unwrap();
    let mut out = Vec::new();
    for step in 0..plan.steps.len() {
        let groups = analyse(model).unwrap();
        let classes = plan.step_classes(step, &groups).unwrap();
        let shapes = infer_shapes(model).unwrap();
        remove_channels(model, &groups, &shapes, &classes).unwrap();
        out.push(classes);
    }
    out
}

fn saved_bytes(model: &Model, path: &Path) -> Vec<u8> {
    model.save(path, &Default::default()).unwrap();
    std::fs::read(path).unwrap()
}

fn replay_round_trip(rounds: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = model_path("resnet20_cifar10.bn.onnx");
    let mut pruned = Model::load(&path).unwrap();
    let (plan, chosen) = prune_recording(&mut pruned, rounds);
    assert_eq!(plan.steps.len(), rounds);

    let plan_path = dir.path().join("plan.json");
    plan.save(&plan_path).unwrap();
    let text = std::fs::read_to_string(&plan_path).unwrap();
    assert_eq!(text, plan.to_json().unwrap(), "saved text is to_json");
    let back = PlanFile::load(&plan_path).unwrap();
    assert!(back == plan, "load gives back what was saved");
    assert_eq!(back.to_json().unwrap(), text, "serialisation is stable");

    let mut replayed = Model::load(&path).unwrap();
    let classes = replay(&back, &mut replayed);
    assert_eq!(classes, chosen);
    let a = saved_bytes(&pruned, &dir.path().join("a.onnx"));
    let b = saved_bytes(&replayed, &dir.path().join("b.onnx"));
    assert!(a == b, "replayed model differs from the original run's");
    let original = std::fs::read(&path).unwrap();
    assert!(a.len() < original.len(), "the model got smaller");
}

#[test]
fn one_step_plan_replays_byte_identical() {
    replay_round_trip(1);
}

#[test]
fn two_step_plan_replays_byte_identical() {
    replay_round_trip(2);
}

#[test]
fn plan_json_has_the_documented_shape() {
    let mut model = Model::load(model_path("resnet20_cifar10.bn.onnx")).unwrap();
    let (plan, chosen) = prune_recording(&mut model, 1);
    let v: serde_json::Value = serde_json::from_str(&plan.to_json().unwrap()).unwrap();
    assert_eq!(v["format"], PLAN_FORMAT);
    assert!(v["model"].as_str().unwrap().starts_with("fnv1a64:"));
    assert_eq!(v["meta"]["criterion"], "l1");
    assert_eq!(v["meta"]["options"]["ratio"], 0.3);
    let groups = v["steps"][0]["groups"].as_array().unwrap();
    let removed: usize = groups
        .iter()
        .map(|g| g.get("removed").map_or(0, |r| r.as_array().unwrap().len()))
        .sum();
    assert_eq!(removed, chosen[0].len());
    for g in groups {
        let channels = g["channels"].as_u64().unwrap() as usize;
        assert_eq!(g["scores"].as_array().unwrap().len(), channels);
        assert!(g["sources"][0].as_str().unwrap().ends_with(')'));
        if let Some(r) = g.get("removed") {
            let r: Vec<u64> = r
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap())
                .collect();
            assert!(r.windows(2).all(|w| w[0] < w[1]), "ascending: {r:?}");
            assert!(r.iter().all(|&p| (p as usize) < channels));
        }
    }
    // Without scores, only the groups losing channels are recorded.
    let mut fresh = Model::load(model_path("resnet20_cifar10.bn.onnx")).unwrap();
    let groups = analyse(&mut fresh).unwrap();
    let mut p = PlanFile::new(fingerprint(&fresh), PlanMeta::default());
    p.push_step(&groups, &chosen[0], None).unwrap();
    assert!(p.steps[0]
        .groups
        .iter()
        .all(|g| !g.removed.is_empty() && g.scores.is_none()));
    assert_eq!(p.step_classes(0, &groups).unwrap(), chosen[0]);
}

fn err_text(r: lopper::Result<impl std::fmt::Debug>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn plans_that_do_not_fit_give_clear_errors() {
    let mut model = Model::load(model_path("resnet20_cifar10.bn.onnx")).unwrap();
    let (plan, _) = prune_recording(&mut model, 1);

    // A plan from another model: the fingerprint and the groups differ.
    let mut other = Model::load(model_path("resnet56_cifar10.bn.onnx")).unwrap();
    let e = err_text(plan.check_model(&other));
    assert!(
        e.contains("another model") && e.contains(&plan.model),
        "{e}"
    );
    let groups56 = analyse(&mut other).unwrap();
    let e = err_text(plan.step_classes(0, &groups56));
    assert!(e.contains("plan step 1: group"), "{e}");
    assert!(e.contains("differ") || e.contains("channels"), "{e}");

    let mut fresh = Model::load(model_path("resnet20_cifar10.bn.onnx")).unwrap();
    let groups = analyse(&mut fresh).unwrap();
    let first = plan.steps[0].groups[0].clone();

    let mut edited = plan.clone();
    edited.steps[0].groups[0].channels += 1;
    let e = err_text(edited.step_classes(0, &groups));
    let want = format!(
        "group {} ({}): the plan says {} channels, the model has {}",
        first.id,
        first.sources[0],
        first.channels + 1,
        first.channels
    );
    assert!(e.contains(&want), "{e}\nwanted: {want}");

    let mut edited = plan.clone();
    edited.steps[0].groups[0].sources[0] = "nonexistent (Conv)".into();
    let e = err_text(edited.step_classes(0, &groups));
    assert!(
        e.contains("sources differ") && e.contains("nonexistent (Conv)"),
        "{e}"
    );

    let mut edited = plan.clone();
    edited.steps[0].groups[0].id = 10_000;
    let e = err_text(edited.step_classes(0, &groups));
    assert!(
        e.contains("group 10000") && e.contains("not in this model"),
        "{e}"
    );

    let mut edited = plan.clone();
    edited.steps[0].groups[0].removed = vec![first.channels + 5];
    let e = err_text(edited.step_classes(0, &groups));
    assert!(e.contains("out of range"), "{e}");

    let mut edited = plan.clone();
    edited.steps[0].groups[0].removed = vec![0, 0];
    let e = err_text(edited.step_classes(0, &groups));
    assert!(e.contains("removed twice"), "{e}");

    // A step may remove a whole group (depth pruning drops residual branches so); the
    // removal refuses a group that does not end a branch, naming it.
    let mut edited = plan.clone();
    edited.steps[0].groups[0].removed = (0..first.channels).collect();
    for g in &mut edited.steps[0].groups[1..] {
        g.removed.clear();
    }
    let classes = edited.step_classes(0, &groups).unwrap();
    let shapes = lopper::analysis::infer_shapes(&fresh).unwrap();
    let mut copy = fresh.clone();
    let e = err_text(lopper::passes::remove_channels(
        &mut copy, &groups, &shapes, &classes,
    ));
    assert!(
        e.contains(&format!("group {} cannot be removed whole", first.id)),
        "{e}"
    );

    let e = err_text(plan.step_classes(3, &groups));
    assert!(e.contains("1 step(s); there is no step 4"), "{e}");

    let mut p = PlanFile::new(fingerprint(&fresh), PlanMeta::default());
    let e = err_text(p.push_step(&groups, &[usize::MAX], None));
    assert!(e.contains("out of range"), "{e}");
    let e = err_text(p.push_step(&groups, &[], Some(&[1.0])));
    assert!(e.contains("1 scores for"), "{e}");
}

#[test]
fn files_that_are_not_plans_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let e = PlanFile::load(dir.path().join("missing.json")).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert!(e.to_string().contains("missing.json"), "{e}");

    let p = write("garbage.json", "{not json");
    let e = PlanFile::load(&p).unwrap_err().to_string();
    assert!(
        e.contains("garbage.json") && e.contains("not a JSON file"),
        "{e}"
    );

    let p = write("future.json", r#"{"format": "lopper-plan/9", "steps": []}"#);
    let e = PlanFile::load(&p).unwrap_err().to_string();
    assert!(
        e.contains("unknown plan format 'lopper-plan/9'") && e.contains(PLAN_FORMAT),
        "{e}"
    );

    let p = write("report.json", r#"{"groups": 3}"#);
    let e = PlanFile::load(&p).unwrap_err().to_string();
    assert!(e.contains("not a lopper plan"), "{e}");

    // A misspelled field is an error, not a silently empty removal.
    let p = write(
        "typo.json",
        r#"{"format": "lopper-plan/1", "model": "fnv1a64:0", "meta": {"criterion": "l1"},
            "steps": [{"groups": [{"id": 0, "sources": [], "channels": 4, "remove": [1]}]}]}"#,
    );
    let e = PlanFile::load(&p).unwrap_err().to_string();
    assert!(
        e.contains("invalid lopper-plan/1 plan") && e.contains("remove"),
        "{e}"
    );

    // Non-finite scores survive as null / NaN.
    let p = write(
        "nan.json",
        r#"{"format": "lopper-plan/1", "model": "fnv1a64:0", "meta": {"criterion": "l1"},
            "steps": [{"groups": [{"id": 0, "sources": [], "channels": 2, "scores": [null, 0.5]}]}]}"#,
    );
    let plan = PlanFile::load(&p).unwrap();
    let s = plan.steps[0].groups[0].scores.as_ref().unwrap();
    assert!(s[0].is_nan() && s[1] == 0.5);
    assert!(plan.to_json().unwrap().contains("null"));
}

#[test]
fn fingerprint_is_structural_and_stable() {
    let dir = tempfile::tempdir().unwrap();
    let p20 = model_path("resnet20_cifar10.bn.onnx");
    let a = Model::load(&p20).unwrap();
    let fa = fingerprint(&a);
    assert!(
        fa.starts_with("fnv1a64:") && fa.len() == "fnv1a64:".len() + 16,
        "{fa}"
    );
    assert_eq!(fingerprint(&Model::load(&p20).unwrap()), fa, "re-loaded");
    let copy = dir.path().join("copy.onnx");
    a.save(&copy, &Default::default()).unwrap();
    assert_eq!(
        fingerprint(&Model::load(&copy).unwrap()),
        fa,
        "saved and re-loaded"
    );

    for other in [
        "resnet56_cifar10.bn.onnx",
        "resnet20_cifar10.folded.onnx",
        "mnist-8.onnx",
    ] {
        let f = fingerprint(&Model::load(model_path(other)).unwrap());
        assert_ne!(f, fa, "{other}");
    }
    // Pruning changes initializer shapes, so the fingerprint.
    let mut pruned = Model::load(&p20).unwrap();
    let before = {
        analyse(&mut pruned).unwrap();
        fingerprint(&pruned)
    };
    prune_recording(&mut pruned, 1);
    assert_ne!(fingerprint(&pruned), before);
}
