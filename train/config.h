// YAML configs: every key that code reads is recorded (with its default) into the resolved config;
// a key nobody read is an error naming it and its line. `--set a.b=value` overrides any key
// (the value is parsed as YAML, so lists work: --set model.mixers=[gla,attention]).
#pragma once
#include <yaml-cpp/yaml.h>

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"

namespace seqmix {

class Config;

class ConfigNode {
 public:
  ConfigNode(Config* cfg, std::string path, YAML::Node node) : cfg_(cfg), path_(std::move(path)), node_(std::move(node)) {}
  template <typename T>
  T get(const std::string& key, const T& fallback) const;
  template <typename T>
  T require(const std::string& key) const;
  bool has(const std::string& key) const;
  ConfigNode child(const std::string& key) const;  // empty node when absent
  std::vector<std::string> list(const std::string& key) const;  // a string or a list of strings
  const std::string& path() const { return path_; }
  std::string where(const std::string& key) const;  // "config.yaml line 12" or "--set"
  std::string full(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }

 private:
  Config* cfg_;
  std::string path_;
  YAML::Node node_;
};

class Config {
 public:
  // Loads a YAML file (errors name the file and line) and applies `overrides` ("a.b=value").
  static std::unique_ptr<Config> load(const std::string& path, const std::vector<std::string>& overrides = {});
  static std::unique_ptr<Config> from_string(const std::string& yaml, const std::string& name = "<string>");
  ConfigNode root() { return ConfigNode(this, "", root_); }
  // Throws for the first key that was never read, naming it and where it was written.
  void check_unused() const;
  // Everything read, with defaults filled in.
  std::string resolved_yaml() const;
  const std::string& source_name() const { return name_; }

  // internal
  void mark_used(const std::string& path, const YAML::Node& value);
  std::string where(const std::string& full_path) const;

 private:
  void apply_override(const std::string& assignment);
  std::string name_;
  YAML::Node root_;
  YAML::Node resolved_;
  std::set<std::string> used_;
  std::set<std::string> overridden_;
};

template <typename T>
T ConfigNode::get(const std::string& key, const T& fallback) const {
  YAML::Node v = node_ && node_.IsMap() ? node_[key] : YAML::Node();
  if (!v || v.IsNull()) {
    cfg_->mark_used(full(key), YAML::Node(fallback));
    return fallback;
  }
  try {
    T out = v.as<T>();
    cfg_->mark_used(full(key), v);
    return out;
  } catch (const YAML::Exception&) {
    SEQMIX_FAIL("config key '", full(key), "' (", where(key), ") has value '", YAML::Dump(v), "' of the wrong type");
  }
}

template <typename T>
T ConfigNode::require(const std::string& key) const {
  SEQMIX_CHECK(has(key), "config key '", full(key), "' is required but missing from ", cfg_->source_name());
  return get<T>(key, T());
}

}  // namespace seqmix
