use strict;
use warnings;
use Test::More;
use lib 't/lib';
use PAGI::Test::Server qw(loop stop_server raw_exchange parse_responses http_get wait_for);
use Future::AsyncAwait;
use File::Temp ();
use PAGI::Server;

# Issue 9 item 15: log lines go through warn, so $SIG{__WARN__} (Test::Warn,
# log collectors) sees them, with the [pagi-server] prefix and a level;
# log_level filters them; messages keep the reference server's wording; the
# access log stays a plain filehandle write.

my @warnings;
$SIG{__WARN__} = sub { push @warnings, $_[0] };

sub serve {
    my (%args) = @_;
    my $server = PAGI::Server->new(host => '127.0.0.1', port => 0, access_log => undef, %args);
    loop()->add($server);
    my $f = $server->listen;
    my $ok = eval { $f->get; 1 };
    return ($server, $ok ? undef : $@);
}

sub logged { my ($re) = @_; return grep { $_ =~ $re } @warnings }

my $http = async sub {
    my ($scope, $receive, $send) = @_;
    die "unsupported scope type '$scope->{type}'\n" if $scope->{type} eq 'lifespan';
    my $path = $scope->{path};
    die "the database is on fire\n" if $path eq '/die';
    return if $path eq '/silent';
    await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-length', 2 ] ] });
    await $send->({ type => 'http.response.body', body => 'ok' });
};

subtest 'banner and app errors reach $SIG{__WARN__}, prefixed and levelled' => sub {
    @warnings = ();
    my ($server) = serve(app => $http);
    my $port = $server->port;
    ok logged(qr/\A\[pagi-server\] info: PAGI-Server-Native .* pid $$/), 'the banner line arrives through warn';
    ok logged(qr/\A\[pagi-server\] info: listening on http:\/\/127\.0\.0\.1:$port\/?\n\z/), 'so does the listening line';
    ok logged(qr/\A\[pagi-server\] info: Lifespan not supported, continuing without it \(the application raised: unsupported scope type 'lifespan'\n?\)\n\z/),
        'a lifespan decline by exception is logged with the original message';
    is http_get($port, '/die')->get->{status}, 500, 'an app that dies gets a 500';
    ok wait_for(sub { logged(qr/\A\[pagi-server\] error: PAGI application error: the database is on fire \(GET \/die\)\n\z/) }, 5),
        'its exception is logged with the reference wording and the original message';
    is http_get($port, '/silent')->get->{status}, 500, 'an app that returns without a response gets a 500';
    ok wait_for(sub { logged(qr/\A\[pagi-server\] error: PAGI application returned without starting a response \(GET \/silent\)\n\z/) }, 5),
        'logged as the reference says it';
    ok !(grep { !/\A\[pagi-server\] (?:debug|info|warn|error): / } @warnings), 'every line has the prefix and a level'
        or diag explain \@warnings;
    stop_server($server);
};

subtest 'log_level and quiet filter what warn sees' => sub {
    @warnings = ();
    my ($server) = serve(app => $http, log_level => 'error');
    is scalar(logged(qr/ info: /)), 0, 'log_level error: no info lines (banner, lifespan decline)';
    http_get($server->port, '/die')->get;
    ok wait_for(sub { logged(qr/ error: PAGI application error: the database is on fire/) }, 5), 'errors still come through';
    stop_server($server);

    @warnings = ();
    ($server) = serve(app => $http, log_level => 'debug', quiet => 1);
    is scalar(logged(qr/ (?:info|debug): /)), 0, 'quiet: nothing below warn, whatever log_level says';
    stop_server($server);

    @warnings = ();
    ($server) = serve(app => $http, log_level => 'warn');
    $server->configure(log_level => 'info');
    $server->_log(info => 'an info line after configure');
    ok logged(qr/\A\[pagi-server\] info: an info line after configure\n\z/), 'configure(log_level) takes effect';
    stop_server($server);
};

subtest 'lifespan messages in the reference wording' => sub {
    @warnings = ();
    my $hang = async sub {
        my ($scope, $receive, $send) = @_;
        await $receive->();
        await loop()->delay_future(after => 30);    # never answers startup
    };
    my ($server, $error) = serve(app => $hang, lifespan_startup_timeout => 0.5, quiet => 1);
    like $error // '', qr/\ALifespan startup failed: Lifespan startup timed out after 0\.5s/, 'listen fails saying startup timed out';
    ok logged(qr/\A\[pagi-server\] error: Lifespan startup timed out after 0\.5s\n\z/), 'and the timeout is logged as the reference says it';
    loop()->remove($server);

    @warnings = ();
    my $started = loop()->new_future;
    my $crash_later = async sub {
        my ($scope, $receive, $send) = @_;
        return await $http->(@_) unless $scope->{type} eq 'lifespan';
        await $receive->();
        await $send->({ type => 'lifespan.startup.complete' });
        await $started;
        die "background task crashed\n";
    };
    ($server) = serve(app => $crash_later, quiet => 1);
    $started->done;
    ok wait_for(sub { logged(qr/\A\[pagi-server\] error: Lifespan app failed after startup: background task crashed\n\z/) }, 5),
        'a failure after startup is logged with its message';
    is http_get($server->port, '/')->get->{body}, 'ok', 'and the server keeps serving';
    stop_server($server);

    @warnings = ();
    my $strict_raise = async sub { die "cannot reach the database\n" };
    ($server, $error) = serve(app => $strict_raise, lifespan_mode => 'on', quiet => 1);
    like $error // '', qr/\ALifespan startup failed: lifespan_mode is 'on' but the application raised: cannot reach the database/,
        "lifespan_mode on: the startup exception's message is in the failure";
    loop()->remove($server);
};

subtest 'the access log is a filehandle write, not a log line' => sub {
    @warnings = ();
    my $file = File::Temp->new;
    open my $fh, '>>', $file->filename or die "open: $!";
    my ($server) = serve(app => $http, access_log => $fh, quiet => 1);
    http_get($server->port, '/logged-path')->get;
    ok wait_for(sub { -s $file->filename }, 5), 'the access line reached the file';
    stop_server($server);
    is scalar(logged(qr/logged-path/)), 0, 'and nothing of it went through warn';
};

done_testing;
