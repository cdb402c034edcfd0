//! Compute devices: which one tch will use, and what this build of libtorch offers.

use serde::Serialize;

/// What `relabel env` reports about the machine learning back end.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceInfo {
    pub cuda_available: bool,
    pub cuda_devices: usize,
    pub threads: i32,
    /// The device `device: auto` picks.
    pub auto: String,
}

/// Probes libtorch (loading it: this fails loudly when libtorch is not where the build put it).
pub fn probe() -> DeviceInfo {
    let cuda = tch::Cuda::is_available();
    DeviceInfo {
        cuda_available: cuda,
        cuda_devices: if cuda {
            tch::Cuda::device_count() as usize
        } else {
            0
        },
        threads: tch::get_num_threads(),
        auto: if cuda { "cuda:0".into() } else { "cpu".into() },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn libtorch_loads_and_computes() {
        let t = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        let s: f64 = t.sum(tch::Kind::Float).double_value(&[]);
        assert_eq!(s, 6.0);
        assert!(super::probe().threads >= 1);
    }
}
