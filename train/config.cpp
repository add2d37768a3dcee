#include "train/config.h"

#include <fstream>
#include <functional>
#include <sstream>

namespace seqmix {

namespace {
std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> parts;
  std::stringstream ss(path);
  std::string p;
  while (std::getline(ss, p, '.')) parts.push_back(p);
  return parts;
}

// Sets node[a][b][c] = value, creating maps on the way (yaml-cpp nodes are handles).
void set_path(YAML::Node root, const std::vector<std::string>& parts, const YAML::Node& value) {
  YAML::Node cur = root;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    if (!cur[parts[i]] || !cur[parts[i]].IsMap()) cur[parts[i]] = YAML::Node(YAML::NodeType::Map);
    YAML::Node next = cur[parts[i]];
    cur.reset(next);
  }
  cur[parts.back()] = YAML::Clone(value);
}
}  // namespace

std::unique_ptr<Config> Config::load(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path);
  SEQMIX_CHECK(in.good(), "cannot open config file '", path, "': check the path");
  std::stringstream buf;
  buf << in.rdbuf();
  auto cfg = from_string(buf.str(), path);
  for (const std::string& o : overrides) cfg->apply_override(o);
  return cfg;
}

std::unique_ptr<Config> Config::from_string(const std::string& yaml, const std::string& name) {
  auto cfg = std::make_unique<Config>();
  cfg->name_ = name;
  try {
    cfg->root_ = YAML::Load(yaml);
  } catch (const YAML::ParserException& e) {
    SEQMIX_FAIL("invalid YAML in ", name, " line ", e.mark.line + 1, ": ", e.msg);
  }
  if (!cfg->root_ || cfg->root_.IsNull()) cfg->root_ = YAML::Node(YAML::NodeType::Map);
  SEQMIX_CHECK(cfg->root_.IsMap(), name, " must be a YAML mapping of sections (run:, data:, model:, train:)");
  cfg->resolved_ = YAML::Node(YAML::NodeType::Map);
  return cfg;
}

void Config::apply_override(const std::string& assignment) {
  size_t eq = assignment.find('=');
  SEQMIX_CHECK(eq != std::string::npos && eq > 0, "--set expects key.path=value, got '", assignment, "'");
  std::string key = assignment.substr(0, eq), value = assignment.substr(eq + 1);
  YAML::Node v;
  try {
    v = YAML::Load(value);
  } catch (const YAML::Exception&) {
    v = YAML::Node(value);
  }
  set_path(root_, split_path(key), v);
  overridden_.insert(key);
}

void Config::mark_used(const std::string& path, const YAML::Node& value) {
  used_.insert(path);
  set_path(resolved_, split_path(path), value);
}

std::string Config::where(const std::string& full_path) const {
  if (overridden_.count(full_path)) return "--set";
  // find the key's mark by walking the tree
  std::vector<std::string> parts = split_path(full_path);
  YAML::Node cur;
  cur.reset(root_);  // the parsed nodes themselves: a clone would lose their line marks
  YAML::Mark mark;
  bool found = false;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (!cur || !cur.IsMap()) break;
    for (auto it = cur.begin(); it != cur.end(); ++it) {
      if (it->first.as<std::string>() == parts[i]) {
        mark = it->first.Mark();
        found = i + 1 == parts.size();
        cur.reset(it->second);
        break;
      }
    }
  }
  if (found && mark.line >= 0) return name_ + " line " + std::to_string(mark.line + 1);
  return name_;
}

void Config::check_unused() const {
  std::function<void(const YAML::Node&, const std::string&)> walk = [&](const YAML::Node& n, const std::string& prefix) {
    for (auto it = n.begin(); it != n.end(); ++it) {
      std::string key = it->first.as<std::string>();
      std::string full = prefix.empty() ? key : prefix + "." + key;
      if (used_.count(full)) continue;
      if (it->second.IsMap()) {
        // a section is fine when something below it was read; it is unknown when nothing was
        bool any = false;
        for (const std::string& u : used_)
          if (u.rfind(full + ".", 0) == 0) any = true;
        if (any) {
          walk(it->second, full);
          continue;
        }
      }
      std::string where_str = overridden_.count(full) ? std::string("--set")
                                                       : name_ + " line " + std::to_string(it->first.Mark().line + 1);
      SEQMIX_FAIL("unknown config key '", full, "' (", where_str, "): check its spelling against docs/CONFIG.md");
    }
  };
  walk(root_, "");
}

std::string Config::resolved_yaml() const {
  YAML::Emitter out;
  out << resolved_;
  return std::string(out.c_str()) + "\n";
}

bool ConfigNode::has(const std::string& key) const {
  return node_ && node_.IsMap() && node_[key] && !node_[key].IsNull();
}

ConfigNode ConfigNode::child(const std::string& key) const {
  YAML::Node v = has(key) ? node_[key] : YAML::Node(YAML::NodeType::Map);
  if (has(key))
    SEQMIX_CHECK(v.IsMap(), "config key '", full(key), "' (", where(key), ") must be a mapping of settings");
  return ConfigNode(cfg_, full(key), v);
}

std::vector<std::string> ConfigNode::list(const std::string& key) const {
  SEQMIX_CHECK(has(key), "config key '", full(key), "' is required but missing");
  YAML::Node v = node_[key];
  std::vector<std::string> out;
  try {
    if (v.IsSequence()) {
      for (const auto& e : v) out.push_back(e.as<std::string>());
    } else {
      out.push_back(v.as<std::string>());
    }
  } catch (const YAML::Exception&) {
    SEQMIX_FAIL("config key '", full(key), "' (", where(key), ") must be a name or a list of names");
  }
  cfg_->mark_used(full(key), v);
  return out;
}

std::string ConfigNode::where(const std::string& key) const { return cfg_->where(full(key)); }

}  // namespace seqmix
