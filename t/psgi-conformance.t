# Plack's own server conformance suite (Plack::Test::Suite), driving
# PAGI::Server with PAGI::App::WrapPSGI and Plack::Middleware::Lint.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";

BEGIN {
    for my $module (qw(Plack::Test::Suite Plack::Middleware::Lint)) {
        next if eval "require $module; 1";
        plan skip_all => "$module is not installed" unless $ENV{CI};
        die "CI: $module is required\n";
    }
}
use PAGI::App::WrapPSGI;

# Every test file is bounded in time; Test::TCP waits for the port itself.
alarm($ENV{PAGI_TEST_TIMEOUT} || 120);

# Runs in the child Test::TCP forks: the server on the port it chose.
my $run_server = sub {
    my ($port, $psgi_app) = @_;
    require PAGI::Server;
    # The suite's "call close" handler calls ok() in this process:
    # Test::TCP's Test::SharedFork numbers it in the parent's stream.
    my $app = PAGI::App::WrapPSGI->new(psgi_app => Plack::Middleware::Lint->wrap($psgi_app))->to_app;
    my $server = PAGI::Server->new(
        app => $app, host => '127.0.0.1', port => $port,
        quiet => 1, access_log => undef, lifespan_mode => 'auto',
    );
    $server->run;
};

Plack::Test::Suite->run_server_tests($run_server);
done_testing;
