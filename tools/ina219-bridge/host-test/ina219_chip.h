// An emulated INA219 for compiling the bridge sketch on a PC (test/power-bridge.test.ts): the
// registers behave as the datasheet says (Current = Shunt * Cal / 4096, Power = Current * Bus / 5000).
#pragma once
#include <cstdint>
#include <cstdlib>

struct Ina219Chip {
  uint16_t regs[6] = {0x399F, 0, 0, 0, 0, 0};
  // The load: amps through a 0.1 ohm shunt at bus_volts.
  void setLoad(double amps, double bus_volts) {
    int16_t shunt = (int16_t)(amps * 0.1 / 10e-6 + (amps >= 0 ? 0.5 : -0.5));
    uint16_t bus = (uint16_t)(bus_volts / 0.004 + 0.5);
    regs[1] = (uint16_t)shunt;
    regs[2] = (uint16_t)((bus << 3) | 0x2);
    int32_t current = (int32_t)shunt * regs[5] / 4096;
    regs[4] = (uint16_t)(int16_t)current;
    regs[3] = (uint16_t)((uint32_t)std::abs(current) * bus / 5000);
  }
};

extern Ina219Chip chip;
