// The mixtrain command-line trainer's entry point (everything else: cli.cpp, cmd_*.cpp).
#include "commands.h"

int main(int argc, char** argv) { return mixtrain::cli::main_entry(argc, argv); }
