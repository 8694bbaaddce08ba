//! Data-parallel pre-training over MPI. With the `mpi` feature (and Open MPI
//! installed; `.ci/test` installs it): two ranks train as one process with
//! the same global batch, write the run once, resume across world sizes,
//! and fail fast when a rank is killed. Without the feature: a launch as
//! several ranks is refused.

mod common;

#[cfg(feature = "mpi")]
mod with_mpi {
    use std::path::Path;
    use std::process::{Command, Output};

    use super::common::{brisk, newest_checkpoint, sets, small_pretrain, stderr};

    /// Relative tolerance on the losses of N ranks against one process: the
    /// ranks compute the same micro-batches with the same random draws, and
    /// only the order in which gradients are summed can differ. (Two ranks sum
    /// two terms, which is exact in either order: bitwise equality is what
    /// this machine measures; the tolerance covers other engines' orders.)
    const LOSS_TOLERANCE: f64 = 1e-5;

    /// A pre-training run small enough for tests: tiny model, 32-token
    /// sequences, global batch 4, a 600-entry vocabulary, one thread per rank.
    fn quick(out: &str, extra: &[&str]) -> Vec<String> {
        let own = sets(&[
            "eval.batches=2",
            "eval.every=5",
            "train.log_every=1",
            "train.save_every=5",
            // A schedule that does not depend on the budget, so that a run
            // stopped at 10 steps and resumed to 20 matches one of 20.
            "train.schedule=constant",
            "train.warmup_fraction=0",
        ]);
        small_pretrain(out, 1, &[&own[..], extra].concat())
    }

    /// `mpirun -np N brisk ARGS` in `cwd`.
    fn mpirun_command(n: usize, args: &[String], cwd: &Path) -> Command {
        let mut cmd = Command::new("mpirun");
        cmd.args(["-np", &n.to_string(), "--oversubscribe"])
            .arg(env!("CARGO_BIN_EXE_brisk"))
            .args(args)
            .current_dir(cwd)
            // CI runs as root, which Open MPI refuses unless told otherwise.
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
        cmd
    }

    fn mpirun(n: usize, args: &[String], cwd: &Path) -> Output {
        mpirun_command(n, args, cwd)
            .output()
            .expect("mpirun runs (install libopenmpi-dev and openmpi-bin)")
    }

    fn one(args: &[String], cwd: &Path) -> Output {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        brisk(&args, cwd)
    }

    /// `(step, loss, validation loss)` of every row of a run's metrics.
    fn losses(run: &Path) -> Vec<(u64, f64, Option<f64>)> {
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|line| {
                let row: serde_json::Value = serde_json::from_str(line).unwrap();
                (
                    row["step"].as_u64().unwrap(),
                    row["loss"].as_f64().unwrap(),
                    row.get("val_loss").map(|v| v.as_f64().unwrap()),
                )
            })
            .collect()
    }

    fn assert_same_training(got: &Path, want: &Path) {
        let (a, b) = (losses(got), losses(want));
        assert_eq!(a.len(), b.len(), "{} vs {}", got.display(), want.display());
        let close = |x: f64, y: f64| (x - y).abs() <= LOSS_TOLERANCE * y.abs().max(1.0);
        for ((s1, l1, v1), (s2, l2, v2)) in a.iter().zip(&b) {
            assert_eq!(s1, s2);
            assert!(close(*l1, *l2), "step {s1}: loss {l1} vs {l2}");
            match (v1, v2) {
                (Some(x), Some(y)) => assert!(close(*x, *y), "step {s1}: val {x} vs {y}"),
                (None, None) => {}
                _ => panic!("step {s1}: validated in one run only"),
            }
        }
    }

    #[test]
    fn two_ranks_train_as_one_process_write_once_and_resume_across_world_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path();
        // One process, the global batch of 4 in two micro-batches of 2.
        let accum2 = ["--set", "train.grad_accum_steps=2"];
        let out = one(
            &quick("one", &[&accum2[..], &["--steps", "20"]].concat()),
            cwd,
        );
        assert!(out.status.success(), "{}", stderr(&out));

        // Two ranks, each one micro-batch of 2.
        let out = mpirun(2, &quick("two", &["--steps", "20"]), cwd);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_same_training(&cwd.join("two"), &cwd.join("one"));
        let said = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            said.matches("pre-training finished").count(),
            1,
            "rank 0 alone reports: {said}"
        );
        // Written once: one row per step, every checkpoint once and whole, no
        // temporary leftovers, provenance names both ranks.
        let steps: Vec<u64> = losses(&cwd.join("two")).iter().map(|r| r.0).collect();
        assert_eq!(steps, (1..=20).collect::<Vec<_>>());
        let mut saved: Vec<String> = std::fs::read_dir(cwd.join("two/checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        saved.sort();
        assert!(saved.iter().all(|n| n.starts_with("step-")), "{saved:?}");
        assert!(saved.contains(&"step-000020".to_string()), "{saved:?}");
        let provenance = std::fs::read_to_string(cwd.join("two/provenance.json")).unwrap();
        assert!(provenance.contains("\"ranks\": 2"), "{provenance}");
        let metrics = std::fs::read_to_string(cwd.join("two/metrics.jsonl")).unwrap();
        assert!(metrics.contains("allreduce_s"), "the exchange is timed");

        // 2 ranks for 10 steps, then one process (accumulating 2) to 20.
        let out = mpirun(2, &quick("two-one", &["--steps", "10"]), cwd);
        assert!(out.status.success(), "{}", stderr(&out));
        let resume = |out: &str, extra: &[&str]| {
            let mut args: Vec<String> = ["pretrain", "--out", out, "--resume", "--threads", "1"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            args.extend(extra.iter().map(|s| s.to_string()));
            args
        };
        let out = one(
            &resume("two-one", &[&accum2[..], &["--steps", "20"]].concat()),
            cwd,
        );
        assert!(out.status.success(), "{}", stderr(&out));
        assert_same_training(&cwd.join("two-one"), &cwd.join("one"));

        // One process for 10 steps, then 2 ranks to 20.
        let out = one(
            &quick("one-two", &[&accum2[..], &["--steps", "10"]].concat()),
            cwd,
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let accum1 = ["--set", "train.grad_accum_steps=1", "--steps", "20"];
        let out = mpirun(2, &resume("one-two", &accum1), cwd);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_same_training(&cwd.join("one-two"), &cwd.join("one"));
        let a =
            std::fs::read(cwd.join("one-two/checkpoints/step-000020/model.safetensors")).unwrap();
        let b = std::fs::read(cwd.join("one/checkpoints/step-000020/model.safetensors")).unwrap();
        assert_eq!(a.len(), b.len());
    }

    #[test]
    fn compare_runs_every_variant_on_two_ranks() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path();
        let mut args = quick("cmp", &["--steps", "10"]);
        args[0] = "compare".into();
        args.extend(["--variants", "baseline,tupe-r"].map(String::from));
        let out = mpirun(2, &args, cwd);
        assert!(out.status.success(), "{}", stderr(&out));
        let table = std::fs::read_to_string(cwd.join("cmp/comparison.md")).unwrap();
        assert!(
            table.contains("| baseline | 10 |") && table.contains("| tupe-r | 10 |"),
            "{table}"
        );
        for variant in ["baseline", "tupe-r"] {
            let steps: Vec<u64> = losses(&cwd.join("cmp").join(variant))
                .iter()
                .map(|r| r.0)
                .collect();
            assert_eq!(steps, (1..=10).collect::<Vec<_>>(), "{variant}");
        }
        // Resuming a finished comparison skips both variants on every rank.
        let resume: Vec<String> = ["compare", "--out", "cmp", "--resume", "--threads", "1"]
            .iter()
            .map(|s| s.to_string())
            .chain(["--variants", "baseline,tupe-r"].map(String::from))
            .collect();
        let out = mpirun(2, &resume, cwd);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stderr(&out).contains("finished earlier, skipped"));
    }

    #[test]
    fn what_cannot_run_on_several_ranks_is_refused_up_front() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path();
        let out = mpirun(2, &quick("odd", &["--set", "train.batch_size=5"]), cwd);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("train.batch_size") && err.contains("multiple of 2"),
            "{err}"
        );
        assert!(!cwd.join("odd").exists(), "nothing left behind");

        let args: Vec<String> = ["finetune", "--model", "nowhere", "--task", "rte"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let out = mpirun(2, &args, cwd);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("runs in one process"),
            "{}",
            stderr(&out)
        );
    }

    /// The pid of rank `rank` among `parent`'s children (Open MPI's `mpirun`
    /// starts local ranks itself, with their rank in the environment).
    fn rank_pid(parent: u32, rank: usize) -> Option<u32> {
        let children =
            std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
        children.split_whitespace().find_map(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let want = format!("OMPI_COMM_WORLD_RANK={rank}");
            env.split(|&b| b == 0)
                .any(|kv| kv == want.as_bytes())
                .then(|| pid.parse().ok())?
        })
    }

    /// True while any thread of process `pid` runs. The main thread can be
    /// a zombie while the others still finish (and the process still holds
    /// its files, the run's lock among them), so every thread is asked.
    fn alive(pid: u32) -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        tasks.flatten().any(|task| {
            std::fs::read_to_string(task.path().join("status")).is_ok_and(|s| {
                !s.lines()
                    .any(|l| l.starts_with("State:") && l.contains('Z'))
            })
        })
    }

    #[test]
    fn a_killed_rank_fails_the_job_in_seconds_and_the_checkpoint_resumes() {
        use std::time::{Duration, Instant};
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path();
        let child = mpirun_command(2, &quick("run", &["--steps", "100000"]), cwd)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let checkpoint = cwd.join("run/checkpoints/step-000010/state.json");
        let deadline = Instant::now() + Duration::from_secs(300);
        while !checkpoint.exists() {
            assert!(Instant::now() < deadline, "no checkpoint at step 10");
            std::thread::sleep(Duration::from_millis(20));
        }
        let victim = rank_pid(child.id(), 1).expect("rank 1 is a child of mpirun");
        let survivor = rank_pid(child.id(), 0).expect("rank 0 is a child of mpirun");
        let killed = Instant::now();
        let status = Command::new("kill")
            .args(["-KILL", &victim.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let out = child.wait_with_output().unwrap();
        let took = killed.elapsed();
        assert!(!out.status.success(), "the job fails");
        assert!(
            took < Duration::from_secs(20),
            "it ended {took:?} after the kill"
        );
        let err = stderr(&out);
        assert!(err.contains("rank 1"), "names the rank: {err}");

        // Rank 0 may outlive mpirun by a moment (1.8 s measured here), and
        // holds the run directory's lock until it is gone.
        let deadline = Instant::now() + Duration::from_secs(30);
        while alive(survivor) {
            assert!(Instant::now() < deadline, "rank 0 outlived the job by 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }

        // The newest checkpoint is whole: one process resumes from it.
        let newest = newest_checkpoint(&cwd.join("run"));
        assert!(newest >= 10);
        let total = (newest + 2).to_string();
        let args = [
            "pretrain",
            "--out",
            "run",
            "--resume",
            "--threads",
            "1",
            "--steps",
            &total,
        ];
        let out = brisk(&args, cwd);
        assert!(out.status.success(), "{}", stderr(&out));
        let last = format!("run/checkpoints/step-{total:0>6}/state.json");
        assert!(cwd.join(last).exists());
    }
}

#[cfg(not(feature = "mpi"))]
#[test]
fn a_build_without_mpi_refuses_to_run_as_several_ranks() {
    use common::stderr;
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    // What `mpirun -np 2` sets for each rank.
    let out = Command::new(env!("CARGO_BIN_EXE_brisk"))
        .args(["pretrain", "--out", "run", "--steps", "1"])
        .current_dir(dir.path())
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .env("OMPI_COMM_WORLD_RANK", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--features mpi"), "{}", stderr(&out));
    assert!(!dir.path().join("run").exists());
}
