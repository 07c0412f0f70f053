// Just enough of the Arduino core to run the bridge sketch on a PC, with a simulated clock.
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstring>

extern uint32_t simulatedMicros;
inline uint32_t micros() { return simulatedMicros += 250; }  // 32 bits, as on the boards

struct HardwareSerial {
  void begin(unsigned long) {}
  void print(char c) { std::putchar(c); }
  void print(const char *s) { std::fputs(s, stdout); }
};
extern HardwareSerial Serial;
