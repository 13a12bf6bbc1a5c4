//! The pipeline-proof classifier `tc_count`: counts packets and bytes on one interface.

use std::path::Path;

use aya::{
    maps::{Map, MapData, PerCpuArray},
    programs::SchedClassifier,
    Ebpf,
};
use eniguard_common::{PacketCounter, TC_COUNTER_MAP, TC_COUNT_PROGRAM};

use super::{
    attach::{attach, AttachMode, Direction},
    pins::PinDir,
    GuardError,
};

/// A loaded and attached counter; dropping it detaches the program (pins stay until removed).
pub struct AttachedCounter {
    _ebpf: Ebpf,
    pub mode: AttachMode,
}

/// Loads `tc_count` with its counter map pinned under `pins`, and attaches it to `iface`.
pub fn attach_counter(
    pins: &PinDir,
    iface: &str,
    direction: Direction,
    mode: AttachMode,
    priority: u16,
) -> Result<AttachedCounter, GuardError> {
    // Check the interface before anything is created, so a typo leaves nothing behind.
    super::attach::ifindex(iface)?;
    pins.create()?;
    let mut ebpf = super::load(&[(TC_COUNTER_MAP, pins.map(TC_COUNTER_MAP))], &[])?;
    let program: &mut SchedClassifier = ebpf
        .program_mut(TC_COUNT_PROGRAM)
        .ok_or(GuardError::MissingProgram(TC_COUNT_PROGRAM))?
        .try_into()
        .map_err(|source| GuardError::Program { name: TC_COUNT_PROGRAM, source })?;
    program.load().map_err(|source| GuardError::Program { name: TC_COUNT_PROGRAM, source })?;
    let mode = attach(program, iface, direction, mode, priority)?;
    Ok(AttachedCounter { _ebpf: ebpf, mode })
}

/// Reads the pinned counter and sums it over all possible CPUs.
pub fn read_counter(pin: &Path) -> Result<PacketCounter, GuardError> {
    let map_err = |source| GuardError::Map { name: pin.display().to_string(), source };
    let data = MapData::from_pin(pin).map_err(map_err)?;
    let array: PerCpuArray<MapData, PacketCounter> =
        PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(map_err)?;
    let values = array.get(&0, 0).map_err(map_err)?;
    Ok(values.iter().fold(PacketCounter::default(), |acc, v| PacketCounter {
        packets: acc.packets + v.packets,
        bytes: acc.bytes + v.bytes,
    }))
}
