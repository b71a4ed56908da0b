//! Training mechanics: gradient flow to every trainable tensor, exact resumption after an
//! interruption, the shipped configs, and what a bad step does.

use candle_core::Device;
use candle_nn::VarMap;
use fml::checkpoint;
use fml::config::Config;
use fml::loss::{Objective, TrainBatch};
use fml::network::FaceNet;
use fml::render::Backend;
use fml::train::{Stage, TrainOptions};
use std::path::{Path, PathBuf};

fn tiny_config(data: &Path) -> Config {
    let mut c = Config::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny.toml")).unwrap();
    c.data.dataset = data.to_path_buf();
    c.correctives.count = 8;
    c.train.batch = 4;
    c.train.val_every = 0;
    c
}

/// A fake dataset (gradient images, an ellipse of landmarks) at the tiny config's size.
fn data(dir: &Path) -> PathBuf {
    let p = dir.join("fake.fmlds");
    fml::data::dataset::write_synthetic(&p, 24, 64, 3).unwrap();
    p
}

fn batch(cfg: &Config, device: &Device) -> TrainBatch {
    let loader = fml::data::loader::Loader::new(
        &cfg.data.dataset,
        fml::data::loader::LoaderConfig { batch_size: cfg.train.batch, ..Default::default() },
    )
    .unwrap();
    let b = loader.batch_at(Default::default()).unwrap();
    let n = b.len();
    TrainBatch::from_host(b.images, b.landmarks, b.confidence, n, b.size, device).unwrap()
}

/// Names of the trainable tensors whose gradient is missing or zero after one backward pass.
fn without_gradient(varmap: &VarMap, net: &FaceNet, cfg: &Config, tb: &TrainBatch) -> Vec<String> {
    let objective = Objective::new(net, &cfg.loss, 1).unwrap();
    let pred = net.predict(&tb.images).unwrap();
    let grads = objective.compute(net, &pred, tb).unwrap().total.backward().unwrap();
    let mut missing = Vec::new();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        if !has_gradient(&grads, var) {
            missing.push(name.clone());
        }
    }
    missing.sort();
    missing
}

/// Whether `grads` holds a gradient for `var` that is not all zero.
fn has_gradient(grads: &candle_core::backprop::GradStore, var: &candle_core::Var) -> bool {
    grads.get(var.as_tensor()).is_some_and(|g| g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0)
}

/// A finetuning network on the demo model (zero corrective bases) whose output layer is small
/// and random, as after pretraining.
fn finetuning_net(cfg: &Config, varmap: &VarMap) -> FaceNet {
    let dev = Device::Cpu;
    let net = FaceNet::new(&fml::face_model::demo::demo_model(), cfg, true, Backend::Fast, varmap, &dev).unwrap();
    let data = varmap.data().lock().unwrap();
    let head = &data["encoder.head.weight"];
    head.set(&(candle_core::Tensor::randn(0f32, 1f32, head.shape(), &dev).unwrap() * 1e-3).unwrap()).unwrap();
    drop(data);
    net
}

#[test]
fn every_trainable_tensor_receives_a_gradient_when_finetuning() {
    // Finetuning starts from a pretrained encoder, i.e. a non-zero output layer; with it one
    // backward pass reaches every tensor, the (zero) corrective bases included.
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(&data(dir.path()));
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let net = finetuning_net(&cfg, &varmap);
    let tb = batch(&cfg, &dev);
    let missing = without_gradient(&varmap, &net, &cfg, &tb);
    assert!(missing.is_empty(), "no gradient for {missing:?}");
    assert!(varmap.data().lock().unwrap().len() >= 18, "encoder (16 tensors) and 2 corrective bases");
}

#[test]
fn pretraining_gradients_reach_the_head_first_then_everything() {
    // The output layer starts at zero (mean face, frontal pose, neutral light), so the first
    // backward pass reaches only the head; after one update every tensor gets a gradient.
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(&data(dir.path()));
    let dev = Device::Cpu;
    let model = fml::face_model::demo::demo_model();
    let varmap = VarMap::new();
    let net = FaceNet::new(&model, &cfg, false, Backend::Fast, &varmap, &dev).unwrap();
    let tb = batch(&cfg, &dev);
    let missing = without_gradient(&varmap, &net, &cfg, &tb);
    assert!(!missing.iter().any(|n| n.starts_with("encoder.head")), "{missing:?}");
    let objective = Objective::new(&net, &cfg.loss, 1).unwrap();
    let groups = varmap.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone(), 1.0)).collect();
    let mut opt = fml::train::adadelta::AdaDelta::with_groups(groups, 0.95, 1e-6).unwrap();
    let pred = net.predict(&tb.images).unwrap();
    let g = objective.compute(&net, &pred, &tb).unwrap().total.backward().unwrap();
    candle_nn::Optimizer::step(&mut opt, &g).unwrap();
    let missing = without_gradient(&varmap, &net, &cfg, &tb);
    assert!(missing.is_empty(), "no gradient after one update for {missing:?}");
}

fn run(
    cfg: &Config,
    stage: Stage,
    out: &Path,
    resume: bool,
    stop_at: Option<u64>,
) -> fml::Result<fml::train::TrainReport> {
    fml::train::train(&TrainOptions {
        config: cfg.clone(),
        stage,
        out: out.to_path_buf(),
        resume,
        progress: false,
        stop_at,
    })
}

fn train_losses(out: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(out.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["split"] == "train")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].to_string()))
        .collect()
}

#[test]
fn interrupted_training_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config(&data(dir.path()));
    cfg.train.steps = 10;
    cfg.train.checkpoint_every = 4;
    cfg.augment = fml::data::augment::Augment::standard();
    // Uninterrupted pretraining and finetuning.
    let (a, af) = (dir.path().join("a"), dir.path().join("af"));
    run(&cfg, Stage::Pretrain, &a, false, None).unwrap();
    run(&cfg, Stage::Finetune { from: a.clone() }, &af, false, None).unwrap();
    // The same, stopped at step 6 (last checkpoint: 6, the stop writes one) and resumed; and a
    // run killed after step 6 whose log ran ahead of its checkpoint (step 4).
    let b = dir.path().join("b");
    run(&cfg, Stage::Pretrain, &b, false, Some(6)).unwrap();
    assert!(run(&cfg, Stage::Pretrain, &b, false, None).is_err(), "a second run must not overwrite the first");
    run(&cfg, Stage::Pretrain, &b, true, None).unwrap();
    assert_eq!(train_losses(&a), train_losses(&b), "resumed pretraining differs");
    let bf = dir.path().join("bf");
    run(&cfg, Stage::Finetune { from: b.clone() }, &bf, false, Some(7)).unwrap();
    // --from is not read on --resume: the run keeps its own record of where it started.
    run(&cfg, Stage::Finetune { from: a.clone() }, &bf, true, None).unwrap();
    assert_eq!(train_losses(&af), train_losses(&bf), "resumed finetuning differs");
    assert_eq!(train_losses(&af).len(), 10);
    let meta = |run: &Path| checkpoint::load(&run.join(checkpoint::FILE), &Device::Cpu).unwrap().meta;
    let from_b = std::fs::canonicalize(b.join(checkpoint::FILE)).unwrap();
    assert_eq!(meta(&bf).finetuned_from, Some(from_b), "a finetuning run records its --from");
    assert_eq!(meta(&b).finetuned_from, None);
}

#[test]
fn runs_refuse_what_they_cannot_continue_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut cfg = tiny_config(&data(d));
    cfg.train.steps = 2;
    let err = |r: fml::Result<fml::train::TrainReport>| r.expect_err("must fail").to_string();

    // Inputs are checked before the run directory exists.
    let mut nodata = cfg.clone();
    nodata.data.dataset = d.join("missing.fmlds");
    let e = err(run(&nodata, Stage::Pretrain, &d.join("n"), false, None));
    assert!(e.contains("data.dataset") && e.contains("missing.fmlds"), "{e}");
    let e = err(run(&cfg, Stage::Pretrain, &d.join("n"), true, None));
    assert!(e.contains("nothing to resume"), "{e}");
    assert!(!d.join("n").exists(), "a run that cannot start created its directory");

    // The stage decides whether correctives are learned, and finetuning needs some.
    let mut corr = cfg.clone();
    corr.train.correctives = true;
    assert!(err(run(&corr, Stage::Pretrain, &d.join("n"), false, None)).contains("fml finetune"));
    let a = d.join("a");
    run(&cfg, Stage::Pretrain, &a, false, None).unwrap();
    let mut none = cfg.clone();
    none.correctives.count = 0;
    assert!(err(run(&none, Stage::Finetune { from: a.clone() }, &d.join("n"), false, None)).contains("count = 0"));
    // A pretraining run of a model with other mode counts cannot be grown into this layout.
    let mut fewer = cfg.clone();
    fewer.model.shape_modes = Some(5);
    let e = err(run(&fewer, Stage::Finetune { from: a.clone() }, &d.join("n"), false, None));
    assert!(e.contains("pretrained for [40, 16, 12] identity / expression / reflectance modes"), "{e}");
    assert!(!d.join("n").exists());

    // --resume continues the same run: only its length (and where it runs) may change.
    let mut other = cfg.clone();
    other.train.batch = 3;
    other.optim.lr_encoder *= 0.5;
    let e = err(run(&other, Stage::Pretrain, &a, true, None));
    assert!(e.contains("train.batch") && e.contains("optim.lr_encoder") && e.contains("config.toml"), "{e}");
    let mut longer = cfg.clone();
    longer.train.steps = 3;
    assert_eq!(run(&longer, Stage::Pretrain, &a, true, None).unwrap().step, 3);
    // Nothing left to do: no steps, no error.
    let r = run(&longer, Stage::Pretrain, &a, true, None).unwrap();
    assert!(r.last.is_empty() && r.step == 3);
    // Without the run's config.toml the checkpoint's own record still holds the seed.
    let bare = d.join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::copy(a.join(fml::checkpoint::FILE), bare.join(fml::checkpoint::FILE)).unwrap();
    let mut reseeded = longer.clone();
    reseeded.train.seed += 1;
    let e = err(run(&reseeded, Stage::Pretrain, &bare, true, None));
    assert!(e.contains("train.seed") && e.contains("checkpoint.safetensors"), "{e}");
    // The dataset may move (data.dataset may change on resume), not change: another split is
    // refused, the same file elsewhere is not.
    let other = d.join("other.fmlds");
    fml::data::dataset::write_synthetic(&other, 30, 64, 3).unwrap();
    let mut elsewhere = longer.clone();
    elsewhere.data.dataset = other;
    let e = err(run(&elsewhere, Stage::Pretrain, &a, true, None));
    assert!(e.contains("other.fmlds") && e.contains("the run was trained on"), "{e}");
    let moved = d.join("moved.fmlds");
    std::fs::copy(&longer.data.dataset, &moved).unwrap();
    elsewhere.data.dataset = moved;
    assert_eq!(run(&elsewhere, Stage::Pretrain, &a, true, None).unwrap().step, 3);

    // A fresh start in a directory whose earlier run stopped before its first checkpoint
    // replaces that run's log instead of appending to it.
    let c = d.join("c");
    std::fs::create_dir_all(&c).unwrap();
    std::fs::write(c.join("log.jsonl"), "{\"step\": 1, \"split\": \"train\", \"loss\": {}}\n").unwrap();
    run(&cfg, Stage::Pretrain, &c, false, None).unwrap();
    assert_eq!(train_losses(&c).iter().map(|l| l.0).collect::<Vec<_>>(), [1, 2]);

    // A checkpoint that lacks a tensor is refused, naming the file and the tensor.
    let ck = fml::checkpoint::load(&a.join(fml::checkpoint::FILE), &Device::Cpu).unwrap();
    let varmap = VarMap::new();
    for (name, t) in &ck.tensors {
        if name != "encoder.head.bias" {
            varmap.data().lock().unwrap().insert(name.clone(), candle_core::Var::from_tensor(t).unwrap());
        }
    }
    let m = d.join("m");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::copy(a.join("config.toml"), m.join("config.toml")).unwrap();
    fml::checkpoint::save(&m.join(fml::checkpoint::FILE), &varmap, &[], &ck.meta).unwrap();
    let e = fml::infer::load_run(&m, &Device::Cpu).map(|_| ()).expect_err("must fail").to_string();
    assert!(e.contains("encoder.head.bias") && e.contains("checkpoint.safetensors"), "{e}");
    let e = err(run(&cfg, Stage::Finetune { from: m.clone() }, &d.join("n"), false, None));
    assert!(e.contains("missing tensor") && e.contains("encoder.head.bias"), "{e}");
    // So is one written by another checkpoint format.
    let mut newer = ck.meta.clone();
    newer.format_version += 1;
    fml::checkpoint::save(&d.join("v2.safetensors"), &varmap, &[], &newer).unwrap();
    let e = fml::checkpoint::load(&d.join("v2.safetensors"), &Device::Cpu).map(|_| ()).expect_err("v2").to_string();
    assert!(e.contains("v2.safetensors") && e.contains("format version 2"), "{e}");
    // So is one of another dtype (the optimiser state included).
    let f16 = VarMap::new();
    let t = candle_core::Tensor::zeros(3, candle_core::DType::F16, &Device::Cpu).unwrap();
    f16.data().lock().unwrap().insert("adadelta.sq_grad.x".into(), candle_core::Var::from_tensor(&t).unwrap());
    fml::checkpoint::save(&d.join("f16.safetensors"), &f16, &[], &ck.meta).unwrap();
    let e = fml::checkpoint::load(&d.join("f16.safetensors"), &Device::Cpu).map(|_| ()).expect_err("F16").to_string();
    assert!(e.contains("adadelta.sq_grad.x is F16"), "{e}");

    // Finetuning starts from a pretraining run of the same base model, mode by mode (equal
    // totals are not enough: 5 identity + 16 expression modes vs 16 + 5).
    let mut swap_a = cfg.clone();
    (swap_a.model.shape_modes, swap_a.model.expr_modes) = (Some(5), Some(16));
    let mut swap_b = cfg.clone();
    (swap_b.model.shape_modes, swap_b.model.expr_modes) = (Some(16), Some(5));
    run(&swap_a, Stage::Pretrain, &d.join("p5"), false, None).unwrap();
    let e = err(run(&swap_b, Stage::Finetune { from: d.join("p5") }, &d.join("n"), false, None));
    assert!(e.contains("[5, 16, ") && e.contains("[16, 5, "), "{e}");
    // ... and under the settings its weights were trained with (the crop size, output scales and
    // camera are not visible in the weights' shapes).
    let mut other_camera = cfg.clone();
    other_camera.camera.focal *= 1.5;
    let e = err(run(&other_camera, Stage::Finetune { from: a.clone() }, &d.join("n"), false, None));
    assert!(e.contains("pretrained with other [camera] settings") && e.contains("config.toml"), "{e}");
    let f = d.join("f");
    run(&cfg, Stage::Finetune { from: a.clone() }, &f, false, None).unwrap();
    let e = err(run(&cfg, Stage::Finetune { from: f.clone() }, &d.join("n"), false, None));
    assert!(e.contains("--from takes a pretraining run"), "{e}");
    assert!(!d.join("n").exists());

    // Export replaces an earlier export, never a training run (its optimiser state would be lost).
    let e1 = d.join("e1");
    fml::infer::export(&a, &e1).unwrap();
    fml::infer::export(&f, &e1).unwrap();
    let e = fml::infer::export(&f, &a).map(|_| ()).expect_err("over a run").to_string();
    assert!(e.contains("holds a training run"), "{e}");
    fml::checkpoint::load(&a.join(fml::checkpoint::FILE), &Device::Cpu).unwrap().tensors["adadelta.sq_grad.encoder.head.bias"]
        .dims1()
        .unwrap();
}

/// Ctrl-C (SIGINT) or SIGTERM to `fml train`: the step in flight finishes, a checkpoint of exactly the
/// logged steps is written, the exit says how to continue, and `--resume` does.
#[cfg(unix)]
#[test]
fn ctrl_c_writes_a_checkpoint_and_resume_continues() {
    // SIGTERM (what job schedulers send before they kill) is handled like Ctrl-C.
    for signal in ["-INT", "-TERM"] {
        stop_and_resume(signal);
    }
}

#[cfg(unix)]
fn stop_and_resume(signal: &str) {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut cfg = tiny_config(&data(d));
    cfg.train.steps = 100_000;
    cfg.train.checkpoint_every = 100_000;
    let config = d.join("run.toml");
    std::fs::write(&config, cfg.to_toml()).unwrap();
    let out = d.join("run");
    let fml = assert_cmd::cargo::cargo_bin("fml");
    let child = std::process::Command::new(&fml)
        .args(["train", "-q", "-c"])
        .stdout(std::process::Stdio::null())
        .arg(&config)
        .arg("-o")
        .arg(&out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while train_steps_logged(&out) < 2 {
        assert!(start.elapsed() < Duration::from_secs(120), "no training steps logged");
        std::thread::sleep(Duration::from_millis(50));
    }
    let killed = std::process::Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("interrupted at step") && stderr.contains("--resume"),
        "{stderr}"
    );
    let ck = fml::checkpoint::load(&out.join(fml::checkpoint::FILE), &Device::Cpu).unwrap();
    let logged = train_steps_logged(&out);
    assert_eq!(ck.meta.step, logged as u64, "the checkpoint must hold every logged step");
    let more = (logged + 2).to_string();
    std::process::Command::new(&fml)
        .args(["train", "-q", "--resume", "--steps", &more, "-c"])
        .arg(&config)
        .arg("-o")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
        .then_some(())
        .expect("resume after Ctrl-C");
    assert_eq!(train_steps_logged(&out), logged + 2);
}

fn train_steps_logged(out: &Path) -> usize {
    std::fs::read_to_string(out.join("log.jsonl")).map_or(0, |t| t.lines().filter(|l| l.contains("\"train\"")).count())
}

#[test]
fn shipped_configs_load_and_follow_the_paper() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let base = Config::load(root.join("base.toml")).unwrap();
    let fine = Config::load(root.join("finetune.toml")).unwrap();
    let tiny = Config::load(root.join("tiny.toml")).unwrap();
    // Sec. 7: batch 5, 200k + 190k iterations, lr 0.01 then 0.001 / 0.005 / 0.01, C = 500, 240 px.
    assert_eq!((base.train.batch, base.train.steps, base.optim.lr_encoder), (5, 200_000, 0.01));
    assert_eq!(
        (fine.train.steps, fine.optim.lr_encoder, fine.optim.lr_geometry, fine.optim.lr_reflectance),
        (190_000, 0.001, 0.005, 0.01)
    );
    assert_eq!((fine.correctives.count, base.encoder.input_size), (500, 240));
    assert_eq!((fine.loss.ref_beta, fine.loss.ref_p, fine.loss.glo_partners), (50.0, 0.9, 6));
    // Eq. 10: landmarks constrain the base level only.
    assert_eq!((base.loss.sparse_final, fine.loss.sparse_final), (0.0, 0.0));
    assert_eq!(tiny.encoder.input_size, 64);
    // The shipped network (data/default) was trained with configs/default.toml: same network,
    // losses, camera and optimiser (its recorded data path and step count differ).
    let default = Config::load(root.join("default.toml")).unwrap();
    let shipped = Config::load(root.join("../data/default/config.toml")).unwrap();
    assert_eq!(default.encoder, shipped.encoder);
    assert_eq!(default.loss, shipped.loss);
    assert_eq!(default.camera, shipped.camera);
    assert_eq!(default.optim, shipped.optim);
    assert_eq!(default.correctives, shipped.correctives);
    assert_eq!(default.loss.std_geometry, 2e-3);
    // The truncated-base experiment: 1 identity mode in the base level, a world of 2.
    let truncated = Config::load(root.join("truncated.toml")).unwrap();
    assert_eq!((truncated.model.shape_modes, truncated.model.expr_modes), (Some(1), Some(1)));
    let world = fml::synth::SynthConfig::load_toml(root.join("truncated-synth.toml")).unwrap();
    assert_eq!((world.shape_scale, world.focal_range, world.centre_jitter), (2.0, [850.0, 850.0], 0.0));
    // Its oracle variant finetunes the same network with a fixed basis row and no corrective
    // regularisers.
    let oracle = Config::load(root.join("truncated-oracle.toml")).unwrap();
    assert_eq!(
        (&oracle.model, &oracle.encoder, &oracle.camera),
        (&truncated.model, &truncated.encoder, &truncated.camera)
    );
    assert_eq!(oracle.correctives, truncated.correctives);
    assert_eq!((oracle.optim.lr_geometry, oracle.loss.sta, oracle.loss.smo), (0.0, 0.0, 0.0));
}

#[test]
fn a_non_finite_loss_stops_training_and_keeps_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config(&data(dir.path()));
    cfg.train.steps = 3;
    let out = dir.path().join("run");
    run(&cfg, Stage::Pretrain, &out, false, None).unwrap();
    let ckpt = out.join(fml::checkpoint::FILE);
    let before = std::fs::read(&ckpt).unwrap();
    // An absurd learning rate drives the weights to infinity within a few steps.
    cfg.train.steps = 200;
    cfg.optim.lr_encoder = 1e30;
    // --resume refuses a changed learning rate unless the run's own config says so.
    std::fs::write(out.join("config.toml"), cfg.to_toml()).unwrap();
    let err = run(&cfg, Stage::Pretrain, &out, true, None).unwrap_err();
    assert!(matches!(err, fml::Error::NonFinite(_)), "{err}");
    assert!(err.to_string().contains("step"), "{err}");
    assert_eq!(std::fs::read(&ckpt).unwrap(), before, "the last good checkpoint must stay intact");
}

/// `--device` / `train.device`: `auto` is the CPU wherever no GPU is usable, in a `cuda` build too
/// (the shipped configs and every command default to it); `cuda` without one is an error that
/// says so; unknown names are refused.
#[test]
fn device_auto_falls_back_to_the_cpu_and_cuda_without_a_gpu_says_why() {
    use fml::train::select_device;
    assert!(select_device("cpu").unwrap().is_cpu());
    let gpu = cfg!(feature = "cuda") && Device::new_cuda(0).is_ok();
    assert_eq!(select_device("auto").unwrap().is_cuda(), gpu);
    match select_device("cuda") {
        Ok(d) => assert!(gpu && d.is_cuda()),
        Err(e) => {
            let msg = e.to_string();
            assert!(!gpu && msg.starts_with("device cuda: "), "{msg}");
            assert!(!msg.contains("backtrace") && msg.lines().count() == 1, "{msg}");
        }
    }
    assert!(select_device("tpu").unwrap_err().to_string().contains("unknown device"));
}

/// `loss.sparse_final` (not the paper's, off by default): E_sparse at the base level's landmark
/// vertices, on the final level. With zero corrective bases the two levels coincide, so the term
/// equals E_sparse; its gradient reaches the geometry correctives, which E_sparse's does not.
#[test]
fn sparse_final_is_off_by_default_and_is_e_sparse_on_the_final_level() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config(&data(dir.path()));
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let net = finetuning_net(&cfg, &varmap);
    let tb = batch(&cfg, &dev);
    let pred = net.predict(&tb.images).unwrap();
    let term = |t: &fml::loss::LossTerms, name: &str| t.terms.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone());
    let off = Objective::new(&net, &cfg.loss, 1).unwrap().compute(&net, &pred, &tb).unwrap();
    assert!(term(&off, "sparse_final").is_none(), "logged although off");

    cfg.loss.sparse_final = 0.5;
    let on = Objective::new(&net, &cfg.loss, 1).unwrap().compute(&net, &pred, &tb).unwrap();
    let (sf, s) = (term(&on, "sparse_final").unwrap(), term(&on, "sparse").unwrap());
    let scalar = |t: &candle_core::Tensor| t.to_scalar::<f32>().unwrap();
    assert!(scalar(&s) > 0.0);
    assert_eq!(scalar(&sf), scalar(&s), "zero bases: the final level is the base level");
    let d = scalar(&on.total) - scalar(&off.total);
    assert!((d - 0.5 * scalar(&sf)).abs() <= 1e-5 * scalar(&on.total), "total grows by the weighted term: {d}");
    let geometry = varmap.data().lock().unwrap()[fml::face_model::multilevel::GEOMETRY_CORRECTIVES].clone();
    let reaches = |t: &candle_core::Tensor| has_gradient(&t.backward().unwrap(), &geometry);
    assert!(reaches(&sf), "E_sparse on the final level must reach the geometry correctives");
    assert!(!reaches(&s), "E_sparse (eq. 10) is the base level's");
}

/// A run trained with a face model given relative to the working directory records it relative
/// to the run directory: the run then reads from any working directory, and `--resume` with the
/// same config from the original directory still continues it.
#[test]
fn a_run_names_its_face_model_relative_to_itself() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let work = d.join("work");
    std::fs::create_dir(&work).unwrap();
    fml::face_model::demo::demo_model().save(work.join("m.safetensors")).unwrap();
    data(&work);
    let mut cfg = tiny_config(Path::new("fake.fmlds"));
    cfg.model.path = "m.safetensors".into();
    cfg.train.steps = 2;
    std::fs::write(work.join("c.toml"), cfg.to_toml()).unwrap();
    let fml = || {
        let mut c = assert_cmd::Command::cargo_bin("fml").unwrap();
        c.env_remove("FML_DEFAULT_MODEL");
        c
    };
    fml()
        .current_dir(&work)
        .args(["train", "-q", "--config", "c.toml", "--out", "runs/r", "--stop-at", "1"])
        .assert()
        .success();
    let recorded = Config::load(work.join("runs/r/config.toml")).unwrap();
    assert_eq!(Path::new(&recorded.model.path), Path::new("../../m.safetensors"));
    // From elsewhere: the run's model is found.
    picture_for_reconstruct(&d.join("face.png"));
    fml()
        .current_dir(d)
        .args(["reconstruct", "-q", "--whole", "face.png", "-o", "face.obj", "--checkpoint", "work/runs/r"])
        .assert()
        .success();
    // Resumed from the original directory with the config as given: the same model, not a change.
    fml()
        .current_dir(&work)
        .args(["train", "-q", "--config", "c.toml", "--out", "runs/r", "--resume"])
        .assert()
        .success();
    // A different model file is still a change.
    fml::face_model::demo::demo_model().save(work.join("m2.safetensors")).unwrap();
    cfg.model.path = "m2.safetensors".into();
    std::fs::write(work.join("c2.toml"), cfg.to_toml()).unwrap();
    fml()
        .current_dir(&work)
        .args(["train", "-q", "--config", "c2.toml", "--out", "runs/r", "--resume", "--steps", "3"])
        .assert()
        .failure()
        .stderr(predicates::str::contains("model.path differs"));
}

fn picture_for_reconstruct(p: &Path) {
    image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, 128])).save(p).unwrap();
}
