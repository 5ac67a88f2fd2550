package PSGIAppsLater;
# later($env, $seconds, $code): runs $code after a pause, the way a PSGI app
# must on the server it runs on. A nonblocking server (psgi.nonblocking, as
# under Twiggy or PAGI::App::WrapPSGI) keeps serving while an AnyEvent timer
# waits; a blocking one (HTTP::Server::PSGI, used to check these fixtures)
# can only sleep in place.
use strict;
use warnings;
use Exporter 'import';
use Time::HiRes ();

our @EXPORT_OK = qw(later);

sub later {
    my ($env, $seconds, $code) = @_;
    if ($env->{'psgi.nonblocking'}) {
        require AnyEvent;
        my $timer;
        $timer = AnyEvent->timer(after => $seconds, cb => sub { undef $timer; $code->() });
        return;
    }
    Time::HiRes::sleep($seconds);
    $code->();
    return;
}

1;
