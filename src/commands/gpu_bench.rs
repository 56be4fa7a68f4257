//! What `tttc bench` adds for GPU backends: the kernels' own device time (CUDA events, no
//! host↔device copies), beside the wall-clock time of whole runs.

/// Median and minimum device milliseconds and the GFLOP/s at the median, if any were measured.
pub fn device_summary(times: &mut [f64], flops: f64) -> Option<(f64, f64, f64)> {
    if times.is_empty() {
        return None;
    }
    times.sort_by(f64::total_cmp);
    let n = times.len();
    let median = if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2.0
    };
    Some((median, times[0], flops / (median * 1e-3) / 1e9))
}

/// Adds `device_median_ms`, `device_min_ms`, `device_gflops` to the JSON report.
pub fn add_json(j: &mut serde_json::Value, device: Option<(f64, f64, f64)>) {
    if let (Some((median, min, gflops)), Some(obj)) = (device, j.as_object_mut()) {
        obj.insert("device_median_ms".into(), median.into());
        obj.insert("device_min_ms".into(), min.into());
        obj.insert("device_gflops".into(), gflops.into());
    }
}

/// Prints the device line of the text report.
pub fn print_text(device: Option<(f64, f64, f64)>) {
    if let Some((median, min, gflops)) = device {
        println!(
            "device    {median:.3} ms median kernel time (min {min:.3} ms), {gflops:.2} GFLOP/s; the runs above include host<->device copies"
        );
    }
}
