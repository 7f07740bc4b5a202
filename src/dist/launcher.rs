//! What the process launcher told us through the environment, before MPI is started.
//!
//! We start MPI only when a launcher is present: a plain `mezo ...` on a laptop should not pay for
//! (or depend on) an MPI singleton start-up. The launcher's own idea of the world size is kept so
//! that a mis-launch is caught: `srun` without a working PMI plug-in starts N independent
//! singletons, each of which would silently redo the whole job.

/// The launcher that started this process, as far as its environment variables tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub kind: LauncherKind,
    /// World size the launcher intends, when it says so.
    pub expected_size: Option<usize>,
    /// This process's rank on its node, when the launcher says so.
    pub local_rank: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LauncherKind {
    /// No launcher: one process.
    None,
    /// OpenMPI's `mpirun`/`mpiexec` (`OMPI_COMM_WORLD_*`).
    OpenMpi,
    /// A Slurm job step started by `srun` (`SLURM_STEP_NUM_TASKS` with `SLURM_PROCID`).
    Slurm,
    /// A PMI/PMIx launcher of another MPI (MPICH, Intel MPI, `srun --mpi=pmix` without Slurm vars).
    Pmi,
}

impl LauncherKind {
    pub fn name(self) -> &'static str {
        match self {
            LauncherKind::None => "none",
            LauncherKind::OpenMpi => "OpenMPI mpirun",
            LauncherKind::Slurm => "Slurm srun",
            LauncherKind::Pmi => "PMI",
        }
    }
}

impl Launch {
    /// Reads the process environment.
    pub fn from_env() -> Launch {
        Launch::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads launcher variables through `var`, so that tests need not touch the real environment.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Launch {
        let number = |name: &str| var(name).and_then(|v| v.trim().parse::<usize>().ok());
        if var("OMPI_COMM_WORLD_SIZE").is_some() {
            return Launch {
                kind: LauncherKind::OpenMpi,
                expected_size: number("OMPI_COMM_WORLD_SIZE"),
                local_rank: number("OMPI_COMM_WORLD_LOCAL_RANK"),
            };
        }
        // A batch script also sees SLURM_PROCID and SLURM_NTASKS (the allocation's task count), but
        // only a job step started by srun has SLURM_STEP_NUM_TASKS: its own world size.
        if var("SLURM_PROCID").is_some() && var("SLURM_STEP_NUM_TASKS").is_some() {
            return Launch {
                kind: LauncherKind::Slurm,
                expected_size: number("SLURM_STEP_NUM_TASKS"),
                local_rank: number("SLURM_LOCALID"),
            };
        }
        if var("PMI_RANK").is_some() || var("PMIX_RANK").is_some() {
            return Launch {
                kind: LauncherKind::Pmi,
                expected_size: number("PMI_SIZE"),
                local_rank: number("MPI_LOCALRANKID").or_else(|| number("PMI_LOCAL_RANK")),
            };
        }
        Launch { kind: LauncherKind::None, expected_size: None, local_rank: None }
    }

    pub fn wants_mpi(&self) -> bool {
        self.kind != LauncherKind::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> Launch {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Launch::from_vars(|name| map.get(name).cloned())
    }

    #[test]
    fn no_launcher_is_one_process() {
        let l = launch(&[("HOME", "/root")]);
        assert_eq!(l.kind, LauncherKind::None);
        assert!(!l.wants_mpi());
    }

    #[test]
    fn openmpi_variables() {
        let l = launch(&[
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ]);
        assert_eq!(l, Launch { kind: LauncherKind::OpenMpi, expected_size: Some(4), local_rank: Some(1) });
    }

    #[test]
    fn slurm_step_but_not_batch_script() {
        let step = launch(&[
            ("SLURM_STEP_ID", "0"),
            ("SLURM_PROCID", "5"),
            ("SLURM_STEP_NUM_TASKS", "8"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_LOCALID", "1"),
        ]);
        assert_eq!(step, Launch { kind: LauncherKind::Slurm, expected_size: Some(8), local_rank: Some(1) });
        let batch = launch(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "16")]);
        assert_eq!(batch.kind, LauncherKind::None);
    }

    #[test]
    fn openmpi_wins_over_slurm_inside_an_allocation() {
        let l = launch(&[("SLURM_STEP_ID", "0"), ("SLURM_PROCID", "0"), ("OMPI_COMM_WORLD_SIZE", "2")]);
        assert_eq!(l.kind, LauncherKind::OpenMpi);
    }

    #[test]
    fn pmi_launchers() {
        let l = launch(&[("PMI_RANK", "0"), ("PMI_SIZE", "3"), ("MPI_LOCALRANKID", "0")]);
        assert_eq!(l, Launch { kind: LauncherKind::Pmi, expected_size: Some(3), local_rank: Some(0) });
    }
}
