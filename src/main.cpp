#include "cli/cli.hpp"

int main(int argc, char** argv) { return ckpt::cli::run(argc, argv); }
