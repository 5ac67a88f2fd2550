package PSGIAppsCat;
# A Catalyst app for t/psgi-apps-catalyst.t: one controller
# (PSGIAppsCat::Controller::Root) and sessions through
# Catalyst::Plugin::Session, Session::State::Cookie and Session::Store::FastMmap,
# the store's file in a directory of its own per process.
use strict;
use warnings;
use Catalyst::Runtime 5.80;
use File::Basename ();
use File::Temp ();
use Catalyst qw(Session Session::State::Cookie Session::Store::FastMmap);

my $SESSIONS = File::Temp->newdir('psgi-apps-cat-XXXXXX', TMPDIR => 1);

__PACKAGE__->config(
    name => 'PSGIAppsCat',
    # Given, so Catalyst does not go looking for a project directory.
    home => File::Basename::dirname(__FILE__),
    disable_component_resolution_regex_fallback => 1,
    'Plugin::Session' => { storage => "$SESSIONS/sessions", expires => 3600 },
);

__PACKAGE__->setup;

1;
