//! Tests of checkpoint policies: the saved set of case 9 under √n, exact
//! gradients with recomputation, segment-by-segment order, memory falling
//! with the budget, and the binomial (Revolve) counts.

mod common;

use common::{random_inputs, Rng};
use wengert::passes::checkpoint::{revolve_extra_steps, revolve_min_extra_steps};
use wengert::passes::{choose_saved, partition, run_pipeline, Pass, PipelineOptions};
use wengert::{cases, interpret, models, value_and_grad, CheckpointPolicy, DType, Op, Options, Tensor};

const WRT9: [&str; 8] = ["W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8"];

#[test]
fn policies_parse() {
    assert_eq!(
        wengert::cli::parse_checkpoint_policy("all").unwrap(),
        CheckpointPolicy::SaveAll
    );
    assert_eq!(
        wengert::cli::parse_checkpoint_policy("sqrt").unwrap(),
        CheckpointPolicy::Sqrt
    );
    assert_eq!(
        wengert::cli::parse_checkpoint_policy("segments=3").unwrap(),
        CheckpointPolicy::Segments(3)
    );
    assert_eq!(
        wengert::cli::parse_checkpoint_policy("budget=2MiB").unwrap(),
        CheckpointPolicy::Budget(2 << 20)
    );
    assert_eq!(
        wengert::cli::parse_checkpoint_policy("budget=4096").unwrap(),
        CheckpointPolicy::Budget(4096)
    );
    assert!(wengert::cli::parse_checkpoint_policy("segments=0")
        .unwrap_err()
        .to_string()
        .contains("unknown checkpoint policy `segments=0`"));
}

#[test]
fn case09_sqrt_saves_h4_and_h8_and_recomputes_the_rest() {
    let g = cases::case09_checkpoint_chain().unwrap();
    let gg = wengert::autodiff(&g, &WRT9, &[]).unwrap();
    let saved = choose_saved(&gg, &CheckpointPolicy::Sqrt).unwrap();
    // Saved activations: the outputs of the 4th and 8th tanh (h4, h8); h0
    // is the input x, which is always available.
    let tanhs: Vec<_> = gg
        .graph
        .node_ids()
        .filter(|&id| matches!(gg.graph.op(id), Op::Unary(wengert::ir::UnaryOp::Tanh)))
        .take(8)
        .collect();
    let acts: Vec<_> = saved
        .iter()
        .copied()
        .filter(|&s| !matches!(gg.graph.op(s), Op::Input { .. }))
        .collect();
    assert_eq!(acts, vec![tanhs[3], tanhs[7]]);
    assert!(saved.contains(&gg.graph.input("x").unwrap().node));
    // The backward recomputes h1–h3 and h5–h7, segment by segment: the
    // last segment first, then its backward (matmuls), then the first.
    let p = partition(&gg, Some(&saved)).unwrap();
    let ops: Vec<&str> = p.backward.node_ids().map(|id| p.backward.op(id).name()).collect();
    let tanh_at: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| **o == "tanh")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(tanh_at.len(), 6, "{}", p.backward);
    let matmuls_between = ops[tanh_at[2]..tanh_at[3]].iter().filter(|o| **o == "matmul").count();
    assert!(
        matmuls_between >= 4,
        "segment 2's backward runs before segment 1 is recomputed:\n{}",
        p.backward
    );
    // Gradients are bit-identical to saving everything.
    let inputs = random_inputs(&g, &mut Rng::new(9), -0.8, 0.8);
    let joint = interpret(&gg.graph, &inputs).unwrap();
    let fwd = interpret(&p.forward, &inputs).unwrap();
    let grads = interpret(&p.backward, &common::backward_inputs(&g, &p, &inputs, &fwd[1..], &[])).unwrap();
    assert_eq!(&grads[..], &joint[1..]);
}

#[test]
fn checkpointed_jit_gradients_are_bit_identical() {
    let g = models::tanh_chain(12, 8, 16, DType::F32).unwrap();
    let wrt: Vec<String> = (1..=12).map(|i| format!("W{i}")).collect();
    let wrt: Vec<&str> = wrt.iter().map(String::as_str).collect();
    let inputs = random_inputs(&g, &mut Rng::new(12), -0.5, 0.5);
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let all = value_and_grad(&g, &wrt, &Options::default()).unwrap();
    let (_, saved_all) = all.forward(&refs).unwrap();
    let want = all.backward(&refs, &saved_all, &[]).unwrap();
    for policy in [
        CheckpointPolicy::Sqrt,
        CheckpointPolicy::Segments(3),
        CheckpointPolicy::Budget(1024),
    ] {
        let f = value_and_grad(
            &g,
            &wrt,
            &Options {
                checkpoint: policy.clone(),
                ..Options::default()
            },
        )
        .unwrap();
        let (_, saved) = f.forward(&refs).unwrap();
        assert!(saved.size_bytes() < saved_all.size_bytes(), "{policy:?}");
        let got = f.backward(&refs, &saved, &[]).unwrap();
        for (a, b) in got.iter().zip(&want) {
            assert_eq!(a, b, "{policy:?}: recomputation must reproduce the forward bit for bit");
        }
        // The allocation-free variants give the same numbers.
        let mut buffers = f.buffers().unwrap();
        f.forward_into(&refs, &mut buffers).unwrap();
        f.backward_into(&refs, &[], &mut buffers).unwrap();
        assert_eq!(buffers.grads, want);
    }
}

#[test]
fn peak_memory_falls_as_the_budget_falls() {
    // The budget bounds the peak of forward then backward (saved values
    // plus the larger arena), checked on the compiled code.
    let g = models::tanh_chain(16, 32, 64, DType::F32).unwrap();
    let wrt: Vec<String> = (1..=16).map(|i| format!("W{i}")).collect();
    let wrt: Vec<&str> = wrt.iter().map(String::as_str).collect();
    let peak = |budget: usize| {
        let options = Options {
            checkpoint: CheckpointPolicy::Budget(budget),
            ..Options::default()
        };
        let m = value_and_grad(&g, &wrt, &options).unwrap().measure_memory().unwrap();
        assert_eq!(m.planned_peak(), m.measured_peak());
        m.planned_peak()
    };
    let save_all = peak(usize::MAX);
    // An impossible budget gets the lowest peak any candidate reaches.
    let lowest = peak(1);
    assert!(lowest * 2 < save_all, "lowest {lowest} vs save-all {save_all}");
    let mut last = save_all;
    for percent in [90, 75, 50, 30, 15] {
        let budget = save_all * percent / 100;
        let p = peak(budget);
        assert!(p <= last, "peak {p} rose above {last} at budget {budget}");
        if budget >= lowest {
            assert!(p <= budget, "peak {p} over a feasible budget {budget}");
        }
        last = p;
    }
}

#[test]
fn binomial_schedule_counts() {
    // The closed form and the dynamic program agree on a table of (l, c).
    for l in 1..=80u64 {
        for c in 1..=6u64 {
            assert_eq!(
                revolve_min_extra_steps(l, c),
                revolve_extra_steps(l as usize, c as usize),
                "l = {l}, c = {c}"
            );
        }
    }
    assert_eq!(revolve_min_extra_steps(1000, 10), 3636);
    assert_eq!(revolve_extra_steps(1000, 10), 3636);
    // One slot: recompute from the start for every step.
    assert_eq!(revolve_min_extra_steps(8, 1), 28);
}

#[test]
fn user_marks_force_saving_or_recomputing() {
    // The seed's chain with h2 marked `save` and h7 marked `recompute`.
    let b = wengert::GraphBuilder::new("marked");
    let mut h = b.input("x", DType::F64, &[2, 4]);
    let ws: Vec<_> = (1..=8)
        .map(|i| b.input(&format!("W{i}"), DType::F64, &[4, 4]))
        .collect();
    let mut hs = Vec::new();
    for (i, w) in ws.into_iter().enumerate() {
        h = h.matmul(w).tanh();
        h = match i + 1 {
            2 => h.save(),
            7 => h.recompute(),
            _ => h,
        };
        hs.push(h);
    }
    let g = b.build(&[("L", h.sum_all())]).unwrap();
    // Marks print and parse back.
    let text = g.to_string();
    assert!(
        text.contains("save = tanh") && text.contains("recompute = tanh"),
        "{text}"
    );
    assert_eq!(wengert::parse(&text).unwrap().to_string(), text);
    let node = |v: wengert::Var| v.id().unwrap();
    for policy in [CheckpointPolicy::SaveAll, CheckpointPolicy::Sqrt] {
        let options = PipelineOptions {
            passes: vec![Pass::Autodiff, Pass::Checkpoint, Pass::Partition],
            wrt: WRT9.iter().map(|s| s.to_string()).collect(),
            checkpoint: policy.clone(),
            ..PipelineOptions::default()
        };
        let r = run_pipeline(&g, &options).unwrap();
        let p = r.partition.as_ref().unwrap();
        let saved: Vec<_> = p.residuals.iter().map(|r| r.node).collect();
        // Autodiff keeps forward node ids, so the builder's ids still apply.
        assert!(saved.contains(&node(hs[1])), "{policy:?}: h2 is saved");
        assert!(!saved.contains(&node(hs[6])), "{policy:?}: h7 is recomputed");
        let inputs = random_inputs(&g, &mut Rng::new(2), -0.8, 0.8);
        let joint = interpret(&r.grad.as_ref().unwrap().graph, &inputs).unwrap();
        let fwd = interpret(&p.forward, &inputs).unwrap();
        let grads = interpret(&p.backward, &common::backward_inputs(&g, p, &inputs, &fwd[1..], &[])).unwrap();
        assert_eq!(&grads[..], &joint[1..], "{policy:?}");
    }
}

#[test]
fn min_cut_saves_no_more_than_the_default_and_gradients_match() {
    for g in [
        models::mlp(16, 12, 20, 5, DType::F64, false).unwrap(),
        models::tanh_chain(6, 4, 8, DType::F64).unwrap(),
        cases::case07_softmax_xent().unwrap(),
    ] {
        let wrt = g.differentiable_inputs();
        let gg = wengert::autodiff(&g, &wrt, &[]).unwrap();
        let default = partition(&gg, None).unwrap();
        let cut = choose_saved(&gg, &CheckpointPolicy::MinCut).unwrap();
        let p = partition(&gg, Some(&cut)).unwrap();
        let act = |p: &wengert::passes::Partition| {
            p.residuals
                .iter()
                .filter(|r| !matches!(gg.graph.op(r.node), Op::Input { .. }))
                .map(|r| r.size_bytes())
                .sum::<usize>()
        };
        assert!(
            act(&p) <= act(&default),
            "{}: min cut saves {} > default {}",
            g.name,
            act(&p),
            act(&default)
        );
        let inputs = random_inputs(&g, &mut Rng::new(1), -1.0, 1.0);
        let joint = interpret(&gg.graph, &inputs).unwrap();
        let fwd = interpret(&p.forward, &inputs).unwrap();
        let grads = interpret(
            &p.backward,
            &common::backward_inputs(&g, &p, &inputs, &fwd[gg.primal_outputs..], &[]),
        )
        .unwrap();
        assert_eq!(&grads[..], &joint[gg.primal_outputs..], "{}", g.name);
    }
    // The MLP's hidden layer: the default saves the ReLU output and its
    // mask (5 bytes per element); the cut saves the GEMM output alone (4
    // bytes) and recomputes the bias add, the ReLU and the mask from it.
    let g = models::mlp(16, 12, 20, 5, DType::F32, false).unwrap();
    let gg = wengert::autodiff(&g, &models::MLP_PARAMS, &[]).unwrap();
    let cut = choose_saved(&gg, &CheckpointPolicy::MinCut).unwrap();
    let saved_ops: Vec<&str> = cut
        .iter()
        .map(|&s| gg.graph.op(s).name())
        .filter(|n| *n != "input")
        .collect();
    assert!(
        saved_ops.contains(&"matmul") && !saved_ops.contains(&"relu") && !saved_ops.contains(&"gt"),
        "{saved_ops:?}"
    );
    assert_eq!(
        wengert::cli::parse_checkpoint_policy("mincut").unwrap(),
        CheckpointPolicy::MinCut
    );
}

/// Under `Slots(c)` for c = 1…4, the backward of `g` recomputes exactly
/// r·l − C(c+r, c+1) blocks of its chain of `l` blocks besides each block's
/// own reversal, saves nothing, and gives gradients bit-identical to saving
/// everything.
fn check_binomial(g: &wengert::Graph, l: usize, tanh_per_block: usize) {
    let wrt: Vec<String> = g.differentiable_inputs().iter().map(|s| s.to_string()).collect();
    let inputs = random_inputs(g, &mut Rng::new(l as u64), -0.8, 0.8);
    let want = interpret(
        &wengert::autodiff(g, &wrt.iter().map(String::as_str).collect::<Vec<_>>(), &[])
            .unwrap()
            .graph,
        &inputs,
    )
    .unwrap();
    let primal_outputs = g.outputs().len();
    for c in 1..=4usize {
        let options = PipelineOptions {
            passes: vec![Pass::Autodiff, Pass::Checkpoint, Pass::Partition],
            wrt: wrt.clone(),
            checkpoint: CheckpointPolicy::Slots(c),
            ..PipelineOptions::default()
        };
        let r = run_pipeline(g, &options).unwrap();
        let b = r.binomial.expect("a chain is detected");
        assert_eq!(b.blocks, l, "{}: c = {c}", g.name);
        assert_eq!(
            b.recomputed_blocks as u64,
            revolve_min_extra_steps(l as u64, c as u64),
            "{}: l = {l}, c = {c}",
            g.name
        );
        // The explanation counts every block copy as extra work, and
        // compares with saving everything on the graph as it was.
        let gg = wengert::autodiff(g, &wrt.iter().map(String::as_str).collect::<Vec<_>>(), &[]).unwrap();
        let chain = wengert::passes::revolve::detect_chain(&gg).unwrap();
        let block_flops: u64 = chain.blocks[0]
            .iter()
            .map(|&v| wengert::passes::checkpoint::node_flops(&gg.graph, v))
            .sum();
        let expl = r.explanation.as_ref().unwrap();
        // (Plus whatever the partition recomputes outside the chain, such
        // as a side output's `2x`.)
        let outside: u64 = expl.recomputed.iter().map(|(_, _, f)| f).sum();
        assert_eq!(
            expl.extra_flops,
            (b.recomputed_blocks + l) as u64 * block_flops + outside,
            "{}: c = {c}",
            g.name
        );
        let save_all = partition(&gg, None).unwrap();
        assert_eq!(
            expl.default_activation_bytes,
            wengert::passes::explain(&gg, &save_all).saved_activation_bytes
        );
        assert!(expl.default_activation_bytes > 0);
        let p = r.partition.as_ref().unwrap();
        assert!(p.residuals.is_empty(), "nothing is saved but the inputs");
        let tanh = p
            .backward
            .node_ids()
            .filter(|&id| matches!(p.backward.op(id), Op::Unary(wengert::ir::UnaryOp::Tanh)))
            .count();
        assert_eq!(
            tanh,
            (b.recomputed_blocks + l) * tanh_per_block,
            "{}: l = {l}, c = {c}: every copy is in the backward",
            g.name
        );
        let fwd = interpret(&p.forward, &inputs).unwrap();
        let grads = interpret(
            &p.backward,
            &common::backward_inputs(g, p, &inputs, &fwd[primal_outputs..], &[]),
        )
        .unwrap();
        assert_eq!(&grads[..], &want[primal_outputs..], "{}: l = {l}, c = {c}", g.name);
    }
}

#[test]
fn binomial_schedule_in_generated_graphs() {
    for l in [2usize, 3, 5, 8, 13] {
        check_binomial(&models::tanh_chain(l, 2, 3, DType::F64).unwrap(), l, 1);
    }
    // Case 8's recurrence (three ops per step) is detected too.
    let g = cases::case08_recurrence().unwrap();
    let gg = wengert::autodiff(&g, &["a", "b", "x"], &[]).unwrap();
    let chain = wengert::passes::revolve::detect_chain(&gg).unwrap();
    assert_eq!(chain.blocks.len(), cases::CASE08_STEPS);
    assert!(chain.blocks.iter().all(|b| b.len() == 3));
}

#[test]
fn binomial_schedule_off_the_first_output_and_through_residual_steps() {
    // Residual steps h ← h + tanh(h W_i): the add has two computed
    // operands, and the spine follows the deeper one through the tanh.
    let l = 9;
    let b = wengert::GraphBuilder::new("residual");
    let mut h = b.data("x", DType::F64, &[2, 3]);
    let ws: Vec<_> = (1..=l)
        .map(|i| b.input(&format!("W{i}"), DType::F64, &[3, 3]))
        .collect();
    for w in ws {
        h = h + h.matmul(w).tanh();
    }
    check_binomial(&b.build(&[("loss", h.sum_all())]).unwrap(), l, 1);
    // The chain feeds the second output; the first is a short side value.
    let l = 7;
    let b = wengert::GraphBuilder::new("second_output");
    let x = b.data("x", DType::F64, &[2, 3]);
    let mut h = x;
    let ws: Vec<_> = (1..=l)
        .map(|i| b.input(&format!("W{i}"), DType::F64, &[3, 3]))
        .collect();
    for w in &ws {
        h = h.matmul(*w).tanh();
    }
    let side = (x * 2.0).matmul(ws[0]).sum_all();
    check_binomial(&b.build(&[("side", side), ("loss", h.sum_all())]).unwrap(), l, 1);
    // A block of two tanh layers with a bias between them (six spine nodes).
    let l = 5;
    let b = wengert::GraphBuilder::new("two_layer_blocks");
    let mut h = b.data("x", DType::F64, &[2, 3]);
    let ws: Vec<_> = (1..=2 * l)
        .map(|i| b.input(&format!("W{i}"), DType::F64, &[3, 3]))
        .collect();
    for pair in ws.chunks(2) {
        h = (h.matmul(pair[0]).tanh() + 0.5).matmul(pair[1]).tanh();
    }
    check_binomial(&b.build(&[("loss", h.sum_all())]).unwrap(), l, 2);
}

#[test]
fn binomial_schedule_for_1000_steps_and_10_slots() {
    let l = 1000;
    let g = models::tanh_chain(l, 1, 2, DType::F32).unwrap();
    let options = PipelineOptions {
        passes: vec![Pass::Autodiff, Pass::Checkpoint, Pass::Partition],
        wrt: vec!["W1".into(), format!("W{l}")],
        checkpoint: CheckpointPolicy::Slots(10),
        ..PipelineOptions::default()
    };
    let r = run_pipeline(&g, &options).unwrap();
    assert_eq!(r.binomial.map(|b| b.recomputed_blocks), Some(3636));
}

#[test]
fn binomial_schedule_lowers_the_planned_peak() {
    let g = models::tanh_chain(32, 16, 64, DType::F32).unwrap();
    let wrt: Vec<String> = (1..=32).map(|i| format!("W{i}")).collect();
    let peak = |policy: CheckpointPolicy| {
        let options = PipelineOptions {
            passes: Pass::ALL.to_vec(),
            wrt: wrt.clone(),
            checkpoint: policy,
            ..PipelineOptions::default()
        };
        let r = run_pipeline(&g, &options).unwrap();
        let saved = r.partition.as_ref().unwrap().saved_bytes();
        saved + r.memory[1].arena_bytes.max(r.memory[2].arena_bytes)
    };
    let (all, slots) = (peak(CheckpointPolicy::SaveAll), peak(CheckpointPolicy::Slots(4)));
    assert!(slots * 3 < all, "slots=4 peak {slots} vs save-all {all}");
}

#[test]
fn planned_arena_equals_the_measured_one() {
    // The memory plan's high-water mark against the bytes the compiled
    // code really writes (an arena filled with byte patterns), for the
    // joint function and both halves, under every policy, on a chain, case
    // 9 and the MLP.
    let chain = models::tanh_chain(8, 8, 16, DType::F32).unwrap();
    let chain_wrt: Vec<String> = (1..=8).map(|i| format!("W{i}")).collect();
    let mlp = models::mlp(16, 32, 24, 10, DType::F32, false).unwrap();
    let graphs = [
        (chain, chain_wrt),
        (
            cases::case09_checkpoint_chain().unwrap(),
            WRT9.iter().map(|s| s.to_string()).collect(),
        ),
        (mlp, ["W1", "b1", "W2", "b2"].iter().map(|s| s.to_string()).collect()),
    ];
    for (g, wrt) in &graphs {
        let wrt: Vec<&str> = wrt.iter().map(String::as_str).collect();
        for policy in [
            CheckpointPolicy::SaveAll,
            CheckpointPolicy::Sqrt,
            CheckpointPolicy::MinCut,
            CheckpointPolicy::Budget(2048),
            CheckpointPolicy::Slots(2),
        ] {
            let options = Options {
                checkpoint: policy.clone(),
                ..Options::default()
            };
            let f = value_and_grad(g, &wrt, &options).unwrap();
            let m = f.measure_memory().unwrap();
            for (what, c) in [("joint", m.joint), ("forward", m.forward), ("backward", m.backward)] {
                assert_eq!(c.measured, c.planned, "{} {policy:?} {what}", g.name);
            }
            assert!(m.planned_peak() > 0);
            assert_eq!(m.planned_peak(), f.memory().split_peak_bytes);
        }
    }
}

#[test]
fn the_pipeline_follows_the_checkpoint_plan() {
    // `plan` is the whole decision (one level of recomputation, else the
    // binomial fallback); the pipeline applies it unchanged.
    let g = models::tanh_chain(16, 4, 8, DType::F32).unwrap();
    let wrt: Vec<String> = (1..=16).map(|i| format!("W{i}")).collect();
    let wrt_refs: Vec<&str> = wrt.iter().map(String::as_str).collect();
    let gg = wengert::autodiff(&g, &wrt_refs, &[]).unwrap();
    let save_all = partition(&gg, None).unwrap().saved_bytes();
    let sqrt = choose_saved(&gg, &CheckpointPolicy::Sqrt).unwrap();
    let (sqrt_peak, _) = wengert::passes::checkpoint::simulate(&gg, &sqrt).unwrap();
    let mut kinds = Vec::new();
    for policy in [
        CheckpointPolicy::Budget(1),
        CheckpointPolicy::Budget(1 << 30),
        CheckpointPolicy::Budget(sqrt_peak),
        CheckpointPolicy::Slots(3),
        CheckpointPolicy::Sqrt,
    ] {
        let options = PipelineOptions {
            passes: vec![Pass::Autodiff, Pass::Checkpoint, Pass::Partition],
            wrt: wrt.clone(),
            checkpoint: policy.clone(),
            ..PipelineOptions::default()
        };
        let r = run_pipeline(&g, &options).unwrap();
        let p = r.partition.as_ref().unwrap();
        match wengert::passes::plan(&gg, &policy).unwrap() {
            wengert::passes::Plan::Binomial(rewritten, schedule) => {
                assert_eq!(r.binomial, Some(schedule), "{policy:?}");
                assert_eq!(
                    r.grad.as_ref().unwrap().graph.len(),
                    rewritten.graph.len(),
                    "{policy:?}"
                );
                kinds.push("binomial");
            }
            wengert::passes::Plan::Saved(saved) => {
                assert_eq!(r.binomial, None, "{policy:?}");
                let want = partition(&gg, Some(&saved)).unwrap();
                assert_eq!(p.saved_bytes(), want.saved_bytes(), "{policy:?}");
                assert_eq!(p.residuals.len(), want.residuals.len(), "{policy:?}");
                kinds.push("saved");
            }
        }
    }
    // An impossible budget and slots take the binomial schedule; a huge
    // budget saves everything; √n's peak is met by one level.
    assert_eq!(kinds, ["binomial", "saved", "saved", "binomial", "saved"]);
    let huge = choose_saved(&gg, &CheckpointPolicy::Budget(1 << 30)).unwrap();
    assert_eq!(partition(&gg, Some(&huge)).unwrap().saved_bytes(), save_all);
}

#[test]
fn every_policy_reproduces_save_all_bit_for_bit_on_every_test_graph() {
    // The seed cases, an MLP, a tanh chain and a residual chain, through the
    // JIT: the gradients under each policy (including the binomial rewrite
    // for slots and for an impossible budget) equal save-all's exactly.
    let residual = {
        let b = wengert::GraphBuilder::new("residual");
        let mut h = b.data("x", DType::F32, &[4, 6]);
        let ws: Vec<_> = (1..=6)
            .map(|i| b.input(&format!("W{i}"), DType::F32, &[6, 6]))
            .collect();
        for w in ws {
            h = h + h.matmul(w).tanh();
        }
        b.build(&[("loss", h.sum_all())]).unwrap()
    };
    let graphs = vec![
        cases::case01_scalar().unwrap(),
        cases::case02_shared().unwrap(),
        cases::case03_two_inputs().unwrap(),
        cases::case04_vjp().unwrap(),
        cases::case05_linear().unwrap(),
        cases::case06_relu().unwrap(),
        cases::case07_softmax_xent().unwrap(),
        cases::case08_recurrence().unwrap(),
        cases::case09_checkpoint_chain().unwrap(),
        models::mlp(8, 12, 10, 3, DType::F32, false).unwrap(),
        models::tanh_chain(9, 4, 8, DType::F64).unwrap(),
        residual,
    ];
    for (k, g) in graphs.iter().enumerate() {
        let wrt = g.differentiable_inputs();
        let mut rng = Rng::new(k as u64 + 1);
        let inputs = random_inputs(g, &mut rng, -0.8, 0.8);
        let refs: Vec<&Tensor> = inputs.iter().collect();
        let all = value_and_grad(g, &wrt, &Options::default()).unwrap();
        // Seeds for outputs that are not scalars, in the backward's order.
        let gg = all.pipeline().grad.as_ref().unwrap();
        let seeds: Vec<Tensor> = gg
            .graph
            .inputs()
            .iter()
            .filter(|i| gg.seed_inputs.contains(&i.name))
            .map(|i| {
                let values = rng.vec(i.ty.num_elements(), -1.0, 1.0);
                Tensor::from_vec(i.ty.shape.clone(), values)
                    .unwrap()
                    .convert(i.ty.dtype)
            })
            .collect();
        let seed_refs: Vec<&Tensor> = seeds.iter().collect();
        let (_, saved_all) = all.forward(&refs).unwrap();
        let want = all.backward(&refs, &saved_all, &seed_refs).unwrap();
        for policy in [
            CheckpointPolicy::Sqrt,
            CheckpointPolicy::Segments(2),
            CheckpointPolicy::MinCut,
            CheckpointPolicy::Budget(1),
            CheckpointPolicy::Slots(2),
        ] {
            let options = Options {
                checkpoint: policy.clone(),
                ..Options::default()
            };
            let f = value_and_grad(g, &wrt, &options).unwrap();
            let (_, saved) = f.forward(&refs).unwrap();
            let got = f.backward(&refs, &saved, &seed_refs).unwrap();
            assert_eq!(got, want, "{}: {policy:?}", g.name);
        }
    }
}

#[test]
fn the_joint_function_follows_the_policy_too() {
    // One call of the joint function computes the forward then the backward
    // of the partition in one arena: under √n it holds fewer activations at
    // once than under save-all, and gives the halves' numbers bit for bit.
    let g = models::tanh_chain(16, 32, 64, DType::F32).unwrap();
    let wrt: Vec<String> = (1..=16).map(|i| format!("W{i}")).collect();
    let wrt: Vec<&str> = wrt.iter().map(String::as_str).collect();
    let inputs = random_inputs(&g, &mut Rng::new(3), -0.5, 0.5);
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let mut joint_arena = Vec::new();
    for policy in [
        CheckpointPolicy::SaveAll,
        CheckpointPolicy::Sqrt,
        CheckpointPolicy::Budget(1),
    ] {
        let options = Options {
            checkpoint: policy.clone(),
            ..Options::default()
        };
        let f = value_and_grad(&g, &wrt, &options).unwrap();
        let m = f.measure_memory().unwrap();
        assert_eq!(m.joint.planned, m.joint.measured, "{policy:?}");
        joint_arena.push(m.joint.planned);
        let all = f.call(&refs).unwrap();
        let (outs, saved) = f.forward(&refs).unwrap();
        let grads = f.backward(&refs, &saved, &[]).unwrap();
        assert_eq!(&all[..1], &outs[..], "{policy:?}");
        assert_eq!(&all[1..], &grads[..], "{policy:?}");
    }
    assert!(
        joint_arena[1] * 5 < joint_arena[0] * 3,
        "√n {} vs save-all {}",
        joint_arena[1],
        joint_arena[0]
    );
    assert!(
        joint_arena[2] < joint_arena[1],
        "binomial {} vs √n {}",
        joint_arena[2],
        joint_arena[1]
    );
}

#[test]
fn the_binomial_rewrite_is_optimal_on_a_table_of_lengths_and_slots() {
    // The rewrite's recomputed block count is the optimum r·l − C(c+r, c+1)
    // for every l ≤ 40 and c ≤ 5: the split points it takes (a binary
    // search on the closed form) are optimal.
    for l in 2..=40usize {
        let g = models::tanh_chain(l, 1, 2, DType::F32).unwrap();
        let gg = wengert::autodiff(&g, &["W1"], &[]).unwrap();
        let chain = wengert::passes::revolve::detect_chain(&gg).unwrap();
        assert_eq!(chain.blocks.len(), l);
        for c in 1..=5usize {
            let (_, b) = wengert::passes::revolve::revolve_chain(&gg, &chain, c).unwrap();
            assert_eq!(
                b.recomputed_blocks as u64,
                revolve_min_extra_steps(l as u64, c as u64),
                "l = {l}, c = {c}"
            );
        }
    }
}

#[test]
fn a_binomial_rewrite_too_large_to_compile_is_refused_and_budgets_stay_bounded() {
    // One slot on 1500 blocks would copy 1.1 million blocks: an error that
    // says how many slots would do, not a graph nothing can compile.
    let l = 1500;
    let g = models::tanh_chain(l, 1, 2, DType::F32).unwrap();
    let options = |policy| PipelineOptions {
        passes: vec![Pass::Autodiff, Pass::Checkpoint, Pass::Partition],
        wrt: vec!["W1".into()],
        checkpoint: policy,
        ..PipelineOptions::default()
    };
    let err = run_pipeline(&g, &options(CheckpointPolicy::Slots(1))).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("checkpoint: 1 slot(s) on a chain of 1500 blocks would recompute 1124250 blocks")
            && text.contains("use at least"),
        "{text}"
    );
    // An impossible budget takes the lowest peak among schedules of at most
    // 16 extra forward sweeps.
    let r = run_pipeline(&g, &options(CheckpointPolicy::Budget(1))).unwrap();
    let b = r.binomial.expect("the binomial fallback");
    assert!(b.recomputed_blocks <= 16 * l, "{b:?}");
    assert!(b.slots >= 2, "{b:?}");
}

/// The checkpoint decisions as golden files (`tests/filetests/checkpoint/`,
/// `UPDATE_EXPECT=1` rewrites them): the table `explain` prints — saved and
/// recomputed values, bytes, extra FLOPs, the binomial schedule, planned
/// and measured arenas — for the seed's case 9 and a 64-layer tanh chain
/// (f32[8,16], so that the suite stays fast) under every policy. A change
/// of decision shows as a diff.
#[test]
fn checkpoint_decisions_match_golden_files() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/filetests/checkpoint");
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    std::fs::create_dir_all(&root).unwrap();
    let chain = models::tanh_chain(64, 8, 16, DType::F32).unwrap();
    let chain_wrt: Vec<String> = (1..=64).map(|i| format!("W{i}")).collect();
    let chain_wrt: Vec<&str> = chain_wrt.iter().map(String::as_str).collect();
    let graphs = [
        ("case09", cases::case09_checkpoint_chain().unwrap(), WRT9.to_vec()),
        ("chain64", chain, chain_wrt),
    ];
    let mut failures = Vec::new();
    for (name, g, wrt) in &graphs {
        for policy in ["all", "sqrt", "segments=4", "mincut", "slots=2", "budget=4KiB"] {
            let options = Options {
                checkpoint: wengert::cli::parse_checkpoint_policy(policy).unwrap(),
                ..Options::default()
            };
            let f = value_and_grad(g, wrt, &options).unwrap();
            let actual = f.explain().unwrap();
            let file = root.join(format!("{name}.{}.expected", policy.replace('=', "-")));
            if update {
                std::fs::write(&file, &actual).unwrap();
            } else {
                let expected = std::fs::read_to_string(&file).unwrap_or_default();
                if expected != actual {
                    failures.push(format!(
                        "{}:\n--- expected\n{expected}--- actual\n{actual}",
                        file.display()
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "run with UPDATE_EXPECT=1 to accept:\n{}",
        failures.join("\n")
    );
}
