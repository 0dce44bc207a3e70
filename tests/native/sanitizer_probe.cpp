// Positive control for the sanitized build (never part of the dcsim module): each mode plants one
// error that AddressSanitizer or UndefinedBehaviorSanitizer must report and abort on.
//   sanitizer_probe clean      no error, exits 0
//   sanitizer_probe heap-read  reads one float past the end of a heap array (ASan)
//   sanitizer_probe overflow   signed int32 overflow (UBSan)
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: sanitizer_probe clean|heap-read|overflow\n");
    return 2;
  }
  const int n = 8 + static_cast<int>(std::strlen(argv[1]) % 2);  // a size the compiler cannot see
  std::unique_ptr<float[]> data(new float[n]);
  for (int i = 0; i < n; ++i) data[i] = static_cast<float>(i);
  float sum = 0.0f;
  if (std::strcmp(argv[1], "clean") == 0) {
    for (int i = 0; i < n; ++i) sum += data[i];
  } else if (std::strcmp(argv[1], "heap-read") == 0) {
    for (int i = 0; i <= n; ++i) sum += data[i];  // i == n is one past the end
  } else if (std::strcmp(argv[1], "overflow") == 0) {
    volatile int32_t big = INT32_MAX;
    const int32_t wrapped = big + n;  // past INT32_MAX
    sum = static_cast<float>(wrapped);
  } else {
    std::fprintf(stderr, "unknown mode %s\n", argv[1]);
    return 2;
  }
  std::printf("sum %g\n", static_cast<double>(sum));
  return 0;
}
