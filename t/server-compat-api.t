use strict;
use warnings;
use Test::More;
use lib 't/lib';
use PAGI::Test::Server qw(loop start_server stop_server raw_exchange parse_responses http_get wait_for);
use PAGI::Test::CLI qw(start_cli stop_cli http_get_cli stderr_of);
use Future::AsyncAwait;
use File::Temp ();
use Time::HiRes ();
use PAGI::Server;

# Issue 9 item 18, drop-in API of the reference server: Future::IO runs on
# IO::Async under the server (PAGI-SPEC 8.3), PAGI::Server->has_tls and
# ->has_http2 say what is built, and configure takes server options.

my $have_future_io = eval { require Future::IO; 1 };
if (!$have_future_io) {
    # A prerequisite: CI must have it; elsewhere say why nothing ran.
    $ENV{CI} ? fail('Future::IO is not installed (libfuture-io-perl)') : plan skip_all => 'Future::IO is not installed';
}

subtest 'Future::IO is wired to IO::Async once PAGI::Server is loaded' => sub {
    no warnings 'once';
    is $Future::IO::IMPL, 'Future::IO::Impl::IOAsync', 'the IO::Async implementation is in use';
    is $PAGI::Server::FUTURE_IO, 'Future::IO::Impl::IOAsync', 'and PAGI::Server says so';
};

my ($rd, $wr);
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    die "unsupported scope type '$scope->{type}'\n" unless $scope->{type} eq 'http';
    my $body;
    if ($scope->{path} eq '/sleep') {
        my $t0 = Time::HiRes::time();
        await Future::IO->sleep(0.3);
        $body = sprintf 'slept %.2f', Time::HiRes::time() - $t0;
    }
    elsif ($scope->{path} eq '/read') {
        $body = 'read ' . (await Future::IO->sysread($rd, 100));
    }
    else {
        $body = 'quick';
    }
    await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-length', length $body ] ] });
    await $send->({ type => 'http.response.body', body => $body });
};

subtest 'apps await Future::IO->sleep and ->sysread without blocking the server' => sub {
    my ($server, $port) = start_server(app => $app);
    my $sleeping = http_get($port, '/sleep');
    # While /sleep waits, the loop serves others: a blocking sleep would not.
    my $quick = http_get($port, '/quick')->get;
    is $quick->{body}, 'quick', 'another request is answered meanwhile';
    ok !$sleeping->is_ready, '... before the sleeping one';
    my $r = $sleeping->get;
    like $r->{body}, qr/\Aslept (\d+\.\d+)\z/, 'the sleep finished';
    my ($slept) = $r->{body} =~ /([\d.]+)/;
    cmp_ok $slept, '>=', 0.29, "it lasted the 0.3 s asked ($slept)";

    pipe($rd, $wr) or die "pipe: $!";
    $wr->autoflush(1);
    my $reading = http_get($port, '/read');
    is http_get($port, '/quick')->get->{body}, 'quick', 'a request waiting in Future::IO->sysread blocks nobody';
    syswrite $wr, 'from the pipe';
    is $reading->get->{body}, 'read from the pipe', 'and gets the bytes when they come';
    stop_server($server);
};

subtest 'has_tls and has_http2 class methods' => sub {
    ok defined &PAGI::Server::has_tls && defined &PAGI::Server::has_http2, 'both exist';
    is(PAGI::Server->has_tls, 1, 'has_tls: rustls is built into the engine');
    is(PAGI::Server->has_http2, 0, 'has_http2: not built yet');
    like(PAGI::Server::Native->build_info, qr/\brustls\b/, 'as build_info reports');
};

subtest 'configure takes server options' => sub {
    my $server = PAGI::Server->new(app => $app, host => '127.0.0.1', port => 0, quiet => 1);
    $server->configure(port => 0, timeout => 5, log_level => 'warn');
    is $server->{config}{timeout}, 5, 'an engine option, before listening';
    is $server->{config}{log_level}, 'warn', 'log_level';
    ok !eval { $server->configure(no_such_option => 1); 1 }, 'an unknown key croaks';
    like $@, qr/unknown option 'no_such_option'/, '... naming the key';
    ok !eval { $server->configure(timeout => 'soon'); 1 }, 'a bad value croaks';
    like $@, qr/option 'timeout' must be/, '... naming the option';
    $server->configure(notifier_name => 'web');
    is $server->notifier_name, 'web', "IO::Async::Notifier's own keys still work";

    loop()->add($server);
    $server->listen->get;
    my $port = $server->port;
    is http_get($port, '/quick')->get->{body}, 'quick', 'serving';
    my $log = File::Temp->new;
    open my $fh, '>>', $log->filename or die "open: $!";
    $fh->autoflush(1);
    my $other = async sub {
        my ($scope, $receive, $send) = @_;
        await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-length', 5 ] ] });
        await $send->({ type => 'http.response.body', body => 'other' });
    };
    $server->configure(app => $other, access_log => $fh, access_log_format => '%m %U %s');
    is http_get($port, '/swapped')->get->{body}, 'other', 'configure(app) on a listening server: the next request gets the new app';
    ok wait_for(sub { -s $log->filename }, 5), 'access_log and access_log_format take effect';
    open my $in, '<', $log->filename or die;
    is scalar(<$in>), "GET /swapped 200\n", '... in the new format';
    ok !eval { $server->configure(timeout => 9); 1 }, 'an option the running engine took croaks once listening';
    like $@, qr/option 'timeout' cannot be changed once the server is listening/, '... naming it';
    ok eval { $server->configure(timeout => 5); 1 }, 'setting it to its current value is fine';
    stop_server($server);
};

subtest 'Future::IO under pagi-server, single process and workers' => sub {
    my $dir = File::Temp->newdir;
    my $file = "$dir/app.pl";
    open my $out, '>', $file or die "write: $!";
    print {$out} <<'PERL';
use strict; use warnings;
use Future::AsyncAwait;
use Future::IO;
async sub {
    my ($scope, $receive, $send) = @_;
    die "no lifespan\n" if $scope->{type} eq 'lifespan';
    await Future::IO->sleep(0.1);
    my $body = "slept in $$";
    await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-length', length $body ] ] });
    await $send->({ type => 'http.response.body', body => $body });
};
PERL
    close $out;
    for my $workers (0, 2) {
        my $child = start_cli([ '--workers', $workers, '--no-access-log', '-q', $file ], timeout => 30);
        ok $child->{ready}, "workers $workers: listening" or do { diag stderr_of($child); next };
        my $r;
        for (1 .. 3) { $r = http_get_cli($child->{port}, '/'); last if $r }
        like $r && $r->{body}, qr/\Aslept in \d+\z/, "workers $workers: the app's Future::IO->sleep completed";
        stop_cli($child);
    }
};

done_testing;
