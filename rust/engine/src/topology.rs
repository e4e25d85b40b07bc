//! Sockets -> CCDs (one shared L3 each) -> cores (private L1D and L2) -> SMT threads.
//!
//! Logical CPU numbering follows Linux on AMD EPYC: CPUs 0..cores-1 are the first thread of every
//! core (socket 0 first), CPUs cores..2*cores-1 their SMT siblings, so CPU n and n + cores share a
//! core (semantics.md section 7, [MEM]; read it from here, never hard-code it).

use crate::config::HostConfig;

#[derive(Clone, Debug)]
pub struct Topology {
    pub sockets: usize,
    pub ccds: usize,
    pub cores: usize,
    pub cpus: usize,
    pub cores_per_ccd: usize,
    pub ccds_per_socket: usize,
    pub threads_per_core: usize,
    /// core of each logical CPU
    pub cpu_core: Vec<u32>,
    /// CCD of each core
    pub core_ccd: Vec<u32>,
    /// socket of each CCD
    pub ccd_socket: Vec<u32>,
}

impl Topology {
    pub fn new(cfg: &HostConfig) -> Self {
        let cores = cfg.cores() as usize;
        let cpus = cfg.cpus() as usize;
        let cpc = cfg.cores_per_ccd as usize;
        let cps = cfg.ccds_per_socket as usize;
        let cpu_core = (0..cpus).map(|c| (c % cores) as u32).collect();
        let core_ccd = (0..cores).map(|c| (c / cpc) as u32).collect();
        let ccd_socket = (0..cfg.ccds() as usize).map(|d| (d / cps) as u32).collect();
        Topology {
            sockets: cfg.sockets as usize,
            ccds: cfg.ccds() as usize,
            cores,
            cpus,
            cores_per_ccd: cpc,
            ccds_per_socket: cps,
            threads_per_core: cfg.threads_per_core as usize,
            cpu_core,
            core_ccd,
            ccd_socket,
        }
    }

    #[inline]
    pub fn ccd_of_cpu(&self, cpu: usize) -> usize {
        self.core_ccd[self.cpu_core[cpu] as usize] as usize
    }

    /// The cores of CCD `ccd`, as a range of core ids.
    #[inline]
    pub fn ccd_cores(&self, ccd: usize) -> std::ops::Range<usize> {
        ccd * self.cores_per_ccd..(ccd + 1) * self.cores_per_ccd
    }

    /// Logical CPUs of a core (its SMT threads).
    pub fn core_cpus(&self, core: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.threads_per_core).map(move |t| t * self.cores + core)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epyc_numbering() {
        let t = Topology::new(&HostConfig::preset("epyc-9755-2s").unwrap());
        assert_eq!(t.cpus, 512);
        assert_eq!(t.cpu_core[0], t.cpu_core[256]);
        assert_ne!(t.cpu_core[0], t.cpu_core[1]);
        assert_eq!(t.ccd_of_cpu(7), 0);
        assert_eq!(t.ccd_of_cpu(8), 1);
        assert_eq!(t.ccd_socket[t.ccd_of_cpu(128)], 1);
        assert_eq!(t.ccd_socket[t.ccd_of_cpu(127)], 0);
        assert_eq!(t.core_cpus(3).collect::<Vec<_>>(), vec![3, 259]);
    }
}
