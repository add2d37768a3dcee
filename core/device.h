#pragma once
#include <string>

namespace seqmix {

enum class DeviceType : uint8_t { CPU, CUDA };

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;
  static Device cpu() { return {DeviceType::CPU, 0}; }
  static Device cuda(int i = 0) { return {DeviceType::CUDA, i}; }
  bool is_cpu() const { return type == DeviceType::CPU; }
  bool is_cuda() const { return type == DeviceType::CUDA; }
  bool operator==(const Device& o) const { return type == o.type && (type == DeviceType::CPU || index == o.index); }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index); }
};

Device parse_device(const std::string& s);  // "cpu", "cuda", "cuda:1"
bool cuda_built();                          // was the CUDA backend compiled in?
int cuda_device_count();                    // 0 when not built or no GPU is visible
bool cuda_available();                      // cuda_device_count() > 0

}  // namespace seqmix
