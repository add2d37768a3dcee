// The `seqmix` subcommands. Each takes the arguments after its name and returns an exit code.
#pragma once
#include <string>
#include <vector>

namespace seqmix::cli {

int train_main(const std::vector<std::string>& args);
int eval_main(const std::vector<std::string>& args);
int generate_main(const std::vector<std::string>& args);
int info_main(const std::vector<std::string>& args);

}  // namespace seqmix::cli
