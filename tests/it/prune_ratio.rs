//! `prune --ratio 0.3` end to end on every shared model: the pruned model is verified by the
//! oracle under ONNX Runtime and tract (relative error ≤ 1e-4), is saved, reloads, loads and runs
//! in both runtimes, passes the onnx checker (full check), and has fewer MACs and parameters.

use crate::common;

use common::*;
use lopper::ir::Model;
use lopper::prune::{prune, PruneOptions, Selection};
use lopper::runtime::BackendKind;

#[test]
fn every_shared_model_prunes_at_ratio_0_3() {
    let mut backends = vec![BackendKind::Tract];
    if require_ort() {
        backends.insert(0, BackendKind::Ort);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut written = Vec::new();
    for path in all_models() {
        let name = short(&path);
        let mut model = Model::load(&path).unwrap();
        let opts = PruneOptions {
            selection: Selection::Ratio(0.3),
            verify_with: backends.clone(),
            tolerance: 1e-4,
        };
        let report = prune(&mut model, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(report.removed > 0, "{name}: nothing removed");
        assert!(
            report.macs.1 < report.macs.0,
            "{name}: MACs {:?}",
            report.macs
        );
        assert!(
            report.params.1 < report.params.0,
            "{name}: params {:?}",
            report.params
        );
        let oracle = report.oracle.as_ref().expect("verified");
        assert_eq!(
            oracle.errors.len(),
            backends.len(),
            "{name}: every runtime checked"
        );
        assert!(oracle.max_rel_error <= 1e-4, "{name}: {:?}", oracle.errors);
        let out = dir.path().join(name.replace('/', "_"));
        model.save(&out, &Default::default()).unwrap();
        let back = Model::load(&out).unwrap();
        let inputs = random_inputs(&back, 9);
        for &kind in &backends {
            let outs = run(kind, &out, &inputs);
            assert!(!outs.is_empty(), "{name}: {kind:?} ran");
        }
        written.push(out);
    }
    let refs: Vec<&std::path::Path> = written.iter().map(|p| p.as_path()).collect();
    check_models(&refs);
}
